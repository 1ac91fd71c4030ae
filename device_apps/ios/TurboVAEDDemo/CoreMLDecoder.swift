import CoreML

/// Compiles the bundled .mlpackage on device and decodes latents -> frames on the chosen compute units.
final class CoreMLDecoder {
    let model: MLModel
    let loadMs: Double
    let computeUnits: MLComputeUnits

    init(bundle: AppBundle, computeUnits: MLComputeUnits) throws {
        let start = Date()
        let compiled = try MLModel.compileModel(at: bundle.modelURL)
        let config = MLModelConfiguration()
        config.computeUnits = computeUnits
        model = try MLModel(contentsOf: compiled, configuration: config)
        loadMs = Date().timeIntervalSince(start) * 1000
        self.computeUnits = computeUnits
    }

    /// latents (B, C, T, h, w) flattened -> frames (B, 3, T', H, W) flattened, in [-1, 1].
    func decode(_ latents: [Float], shape: [Int]) throws -> [Float] {
        let input = try MLMultiArray(shape: shape.map { NSNumber(value: $0) }, dataType: .float32)
        latents.withUnsafeBufferPointer { src in
            input.dataPointer.assumingMemoryBound(to: Float.self).update(from: src.baseAddress!, count: latents.count)
        }
        let out = try model.prediction(from: MLDictionaryFeatureProvider(dictionary: ["latents": input]))
        guard let frames = out.featureValue(for: "frames")?.multiArrayValue else {
            throw NSError(domain: "turbovaed", code: 2, userInfo: [NSLocalizedDescriptionKey: "model has no 'frames' output"])
        }
        return (0..<frames.count).map { frames[$0].floatValue }  // fp16 or fp32 storage, read as Float
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
