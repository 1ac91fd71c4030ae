import CoreML

/// The bundled .mlpackage, compiled on device once and cached (the cache name carries the manifest's sha256,
/// so a swapped bundle is recompiled), loaded for the chosen compute units. Times: compile (nil when the
/// cached compilation was used), first load in this process, a second (warm) load.
final class CoreMLDecoder: FrameDecoder {
    let runtime = "coreml"
    let model: MLModel
    let compiledURL: URL
    let configuration: MLModelConfiguration
    let compileMs: Double?
    let firstLoadMs: Double
    let warmLoadMs: Double
    let computeUnits: MLComputeUnits

    private var input: MLFeatureProvider?
    private var output: MLFeatureProvider?
    var loadNote: String { compileMs.map { String(format: "compiled on device in %.0f ms", $0) } ?? "cached compilation" }

    convenience init(bundle: AppBundle, unit: String) throws {
        let units: [String: MLComputeUnits] = ["cpu": .cpuOnly, "gpu": .cpuAndGPU, "ane": .cpuAndNeuralEngine]
        try self.init(bundle: bundle, computeUnits: units[unit] ?? .cpuAndNeuralEngine)
    }

    init(bundle: AppBundle, computeUnits: MLComputeUnits) throws {
        let caches = FileManager.default.urls(for: .cachesDirectory, in: .userDomainMask)[0]
        let sha = (bundle.manifest["sha256"] as? String ?? "unknown").prefix(16)
        compiledURL = caches.appendingPathComponent("\(sha)-\(bundle.meta.artifact).mlmodelc")
        if FileManager.default.fileExists(atPath: compiledURL.path) {
            compileMs = nil
        } else {
            let start = Date()
            let compiled = try MLModel.compileModel(at: bundle.modelURL)  // a temporary folder
            _ = try FileManager.default.replaceItemAt(compiledURL, withItemAt: compiled)  // atomic move into the cache
            compileMs = Date().timeIntervalSince(start) * 1000
        }
        configuration = MLModelConfiguration()
        configuration.computeUnits = computeUnits
        var start = Date()
        model = try MLModel(contentsOf: compiledURL, configuration: configuration)
        firstLoadMs = Date().timeIntervalSince(start) * 1000
        start = Date()
        _ = try MLModel(contentsOf: compiledURL, configuration: configuration)
        warmLoadMs = Date().timeIntervalSince(start) * 1000
        self.computeUnits = computeUnits
    }

    func prepare(latents: [Float], shape: [Int]) throws {
        let array = MLMultiArray(MLShapedArray<Float>(scalars: latents, shape: shape))
        input = try MLDictionaryFeatureProvider(dictionary: ["latents": array])
    }

    func predict() async throws {
        output = try model.prediction(from: input!)
    }

    /// Read with MLShapedArray: stride-safe for fp16 or padded outputs.
    func frames() throws -> [Float] {
        guard let frames = output?.featureValue(for: "frames")?.multiArrayValue else {
            throw NSError(domain: "turbovaed", code: 2, userInfo: [NSLocalizedDescriptionKey: "model has no 'frames' output"])
        }
        return MLShapedArray<Float>(converting: frames).scalars
    }

    /// Ops the compiled program places on the requested unit vs all of them (MLComputePlan, iOS 17.4+);
    /// (nil, nil) where the plan is unavailable. Constants are not counted.
    func opPlacement() async -> (delegated: Int?, total: Int?) {
        guard #available(iOS 17.4, macOS 14.4, *),
              let plan = try? await MLComputePlan.load(contentsOf: compiledURL, configuration: configuration),
              case let .program(program) = plan.modelStructure,
              let main = program.functions["main"] else { return (nil, nil) }
        var onUnit = 0, total = 0
        for op in main.block.operations where op.operatorName != "const" {
            total += 1
            guard let device = plan.deviceUsage(for: op)?.preferred else { continue }
            switch (device, computeUnits) {
            case (.neuralEngine, .cpuAndNeuralEngine), (.neuralEngine, .all), (.gpu, .cpuAndGPU), (.cpu, .cpuOnly):
                onUnit += 1
            default:
                break
            }
        }
        return (onUnit, total)
    }

    var unitName: String {
        switch computeUnits {
        case .cpuOnly: return "cpu"
        case .cpuAndGPU: return "gpu"
        case .cpuAndNeuralEngine: return "ane"
        default: return "ane"  // .all: Core ML picks, the Neural Engine when it can
        }
    }
}
