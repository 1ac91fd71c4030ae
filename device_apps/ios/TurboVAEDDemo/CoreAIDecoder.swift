import CoreAI
import Foundation

/// The bundled .aimodel on Core AI (iOS 27): `AIModel(contentsOf:options:)` specialises it for the preferred
/// compute unit on first load and caches the result (so the first load includes specialisation, the second
/// is warm). The output goes into a buffer this class owns, with strides it chooses, so reading it back is
/// stride-safe whatever layout the runtime prefers internally.
@available(iOS 27.0, *)
final class CoreAIDecoder: FrameDecoder {
    let runtime = "coreai"
    let unitName: String
    let firstLoadMs: Double
    let warmLoadMs: Double
    let loadNote = "specialised on device by AIModel(contentsOf:options:) (Core AI's default cache)"
    private let function: InferenceFunction
    private let fp32: Bool  // the artifact's dtype (manifest inputs[0].dtype): fp32 recipes take float32
    private let outputShape: [Int]
    private var input: NDArray?
    private var output16: [Float16] = []
    private var output32: [Float] = []

    init(bundle: AppBundle, unit: String) async throws {
        let kind: ComputeUnitKind = unit == "cpu" ? .cpu : unit == "gpu" ? .gpu : .neuralEngine
        let options = SpecializationOptions(preferredComputeUnitKind: kind)
        var start = Date()
        let model = try await AIModel(contentsOf: bundle.modelURL, options: options)
        firstLoadMs = Date().timeIntervalSince(start) * 1000
        start = Date()
        _ = try await AIModel(contentsOf: bundle.modelURL, options: options)
        warmLoadMs = Date().timeIntervalSince(start) * 1000
        guard let fn = try model.loadFunction(named: "main") else {
            throw NSError(domain: "turbovaed", code: 5, userInfo: [NSLocalizedDescriptionKey: "the .aimodel has no 'main' function"])
        }
        function = fn
        unitName = unit
        let inputs = bundle.manifest["inputs"] as? [[String: Any]] ?? []
        fp32 = (inputs.first?["dtype"] as? String) == "float32"
        outputShape = bundle.outputShape
    }

    func prepare(latents: [Float], shape: [Int]) throws {
        input = fp32 ? NDArray(scalars: latents, shape: shape) : NDArray(scalars: latents.map { Float16($0) }, shape: shape)
        let count = outputShape.reduce(1, *)
        output16 = fp32 ? [] : [Float16](repeating: 0, count: count)
        output32 = fp32 ? [Float](repeating: 0, count: count) : []
    }

    func predict() async throws {
        guard let input else { throw NSError(domain: "turbovaed", code: 6, userInfo: [NSLocalizedDescriptionKey: "prepare() first"]) }
        let strides = CoreAIDecoder.rowMajorStrides(outputShape)
        var views = InferenceFunction.MutableViews()
        if fp32 {
            var view = NDArray.MutableView(mutableSpan: output32.mutableSpan, shape: outputShape, strides: strides)
            views.insert(&view, for: "frames")
            _ = try await function.run(inputs: ["latents": input], outputViews: views)
        } else {
            var view = NDArray.MutableView(mutableSpan: output16.mutableSpan, shape: outputShape, strides: strides)
            views.insert(&view, for: "frames")
            _ = try await function.run(inputs: ["latents": input], outputViews: views)
        }
    }

    func frames() throws -> [Float] { fp32 ? output32 : output16.map { Float($0) } }

    /// Core AI reports no per-op placement (its specialisation may fall back to other units per op).
    func opPlacement() async -> (delegated: Int?, total: Int?) { (nil, nil) }

    static func rowMajorStrides(_ shape: [Int]) -> [Int] {
        var strides = [Int](repeating: 1, count: shape.count)
        for i in stride(from: shape.count - 2, through: 0, by: -1) { strides[i] = strides[i + 1] * shape[i + 1] }
        return strides
    }
}
