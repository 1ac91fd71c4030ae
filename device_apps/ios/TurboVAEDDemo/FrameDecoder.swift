import Foundation

/// What the benchmark needs from a runtime: loads timed at init, the input built once outside the timer,
/// one timed prediction, the frames read after it. Core ML (iOS 17+) and Core AI (iOS 27+) implement it;
/// the bundle's backend picks one (`makeDecoder`).
protocol FrameDecoder: AnyObject {
    var runtime: String { get }  // "coreml" | "coreai" (the record's runtime)
    var unitName: String { get }  // "cpu" | "gpu" | "ane"
    var firstLoadMs: Double { get }
    var warmLoadMs: Double { get }
    var loadNote: String { get }
    /// Builds the model input from (B, C, T, h, w) latents, once, outside the timed calls.
    func prepare(latents: [Float], shape: [Int]) throws
    /// One prediction: all that the benchmark times.
    func predict() async throws
    /// The last prediction's frames (B, 3, T', H, W) in [-1, 1], contiguous, read stride-safely.
    func frames() throws -> [Float]
    /// Ops placed on the chosen unit vs all non-constant ops, where the runtime reports it.
    func opPlacement() async -> (delegated: Int?, total: Int?)
}

/// The decoder for this bundle: Core AI bundles need iOS 27; Core ML bundles run on iOS 17+.
func makeDecoder(bundle: AppBundle, unit: String) async throws -> FrameDecoder {
    switch bundle.meta.backend {
    case "coreai":
        guard #available(iOS 27.0, *) else {
            throw NSError(domain: "turbovaed", code: 4, userInfo: [NSLocalizedDescriptionKey:
                "this is a Core AI bundle (.aimodel): it needs iOS 27; export a Core ML recipe for older iOS"])
        }
        return try await CoreAIDecoder(bundle: bundle, unit: unit)
    default:
        return try CoreMLDecoder(bundle: bundle, unit: unit)
    }
}
