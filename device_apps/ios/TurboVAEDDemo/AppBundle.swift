import Foundation

/// A turbovaed app bundle (`turbovaed export RECIPE --bundle`), shipped as the `bundle` folder resource.
struct AppBundle {
    struct Meta: Decodable {
        struct Blob: Decodable { let file: String; let shape: [Int] }
        let format: String
        let artifact: String
        let manifest: String
        let backend: String
        let precision: String
        let fps: Double
        let latents: Blob
        let reference_frames: Blob
    }

    let folder: URL
    let meta: Meta
    let manifest: [String: Any]
    let latents: [Float]
    let reference: [Float]

    init(folder: URL = Bundle.main.url(forResource: "bundle", withExtension: nil)!) throws {
        self.folder = folder
        meta = try JSONDecoder().decode(Meta.self, from: Data(contentsOf: folder.appendingPathComponent("bundle.json")))
        guard meta.format == "turbovaed-app-bundle", ["coreml", "coreai"].contains(meta.backend) else {
            throw NSError(domain: "turbovaed", code: 1, userInfo: [NSLocalizedDescriptionKey:
                "expected a Core ML or Core AI turbovaed app bundle, got \(meta.format) / \(meta.backend)"])
        }
        let data = try Data(contentsOf: folder.appendingPathComponent(meta.manifest))
        manifest = try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
        guard manifest["stream"] == nil else {
            throw NSError(domain: "turbovaed", code: 2, userInfo: [NSLocalizedDescriptionKey:
                "this is a streaming step-graph bundle (inputs: latents chunk, first, states); this app decodes " +
                "whole-clip bundles only: export a recipe without shape.stream_chunk"])
        }
        latents = try AppBundle.floats(folder.appendingPathComponent(meta.latents.file))
        reference = try AppBundle.floats(folder.appendingPathComponent(meta.reference_frames.file))
    }

    /// Raw little-endian float32 (every Apple CPU is little-endian).
    static func floats(_ url: URL) throws -> [Float] {
        let data = try Data(contentsOf: url)
        return data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }

    var modelURL: URL { folder.appendingPathComponent(meta.artifact) }
    /// "normalized" (a diffusion pipeline's output; the graph de-normalises) or "raw" VAE latents.
    var inputLatents: String { manifest["input_latents"] as? String ?? "raw" }
    var outputShape: [Int] {
        ((manifest["outputs"] as? [[String: Any]])?.first?["shape"] as? [Int]) ?? meta.reference_frames.shape
    }
}
