import Foundation
import UIKit

/// A profile record in turbovaed's schema (profiles/README.md); camelCase properties are written as
/// snake_case keys by the encoder below.
struct ProfileRecord: Encodable {
    struct Latency: Encodable { let medianMs: Double; let p10Ms: Double; let p90Ms: Double }
    struct Ops: Encodable { let delegated: Int?; let total: Int? }
    let model: String
    let modelSha256: String
    let artifact: String
    let artifactSha256: String
    let device: String
    let runtime: String
    let runtimeVersion: String
    let precision: String
    let computeUnit: String
    let inputShape: [Int]
    let frames: Int
    let latency: Latency
    let fps: Double
    let source: String
    let status: String
    let precisionMeaning: String
    let runs: Int
    let warmup: Int
    let threads: Int?
    let firstLoadMs: Double
    let warmLoadMs: Double
    let firstInferenceMs: Double
    let peakMemoryMb: Double
    let memoryMethod: String
    let hwModel: String
    let osVersion: String
    let ops: Ops
    let notes: String
}

enum Benchmark {
    static func quantile(_ sorted: [Double], _ q: Double) -> Double {
        let x = Double(sorted.count - 1) * q
        let lo = Int(x), hi = min(lo + 1, sorted.count - 1)
        return sorted[lo] + (sorted[hi] - sorted[lo]) * (x - Double(lo))
    }

    static func psnr(_ a: [Float], _ b: [Float]) -> Double {
        let se = zip(a, b).reduce(0.0) { $0 + Double(($1.0 - $1.1) / 2) * Double(($1.0 - $1.1) / 2) }
        return 10 * log10(Double(a.count) / se)
    }

    /// The machine identifier, e.g. "iPhone16,1" (uname), not the marketing name.
    static func hardwareModel() -> String {
        var info = utsname()
        uname(&info)
        return withUnsafeBytes(of: &info.machine) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
    }

    static func peakMemoryMb() -> Double {
        var info = task_vm_info_data_t()
        var count = mach_msg_type_number_t(MemoryLayout<task_vm_info_data_t>.size / MemoryLayout<natural_t>.size)
        let kr = withUnsafeMutablePointer(to: &info) {
            $0.withMemoryRebound(to: integer_t.self, capacity: Int(count)) { task_info(mach_task_self_, task_flavor_t(TASK_VM_INFO), $0, &count) }
        }
        return kr == KERN_SUCCESS ? Double(info.ledger_phys_footprint_peak) / 1_048_576 : 0
    }

    /// The first prediction (timed alone; it counts as the first warm-up call), the rest of the warm-up, then
    /// `runs` timed predictions: only `prediction` is inside the timer (input built once, output read after).
    /// Returns the record, the last frames and their PSNR vs the fp32 reference.
    static func run(bundle: AppBundle, decoder: FrameDecoder, device: String, runs: Int, warmup: Int) async throws
        -> (ProfileRecord, [Float], Double) {
        try decoder.prepare(latents: bundle.latents, shape: bundle.meta.latents.shape)
        let f0 = Date()
        try await decoder.predict()
        let firstMs = Date().timeIntervalSince(f0) * 1000
        for _ in 0..<max(0, warmup - 1) { try await decoder.predict() }
        var times: [Double] = []
        for _ in 0..<runs {
            let t0 = Date()
            try await decoder.predict()
            times.append(Date().timeIntervalSince(t0) * 1000)
        }
        let frames = try decoder.frames()
        let placement = await decoder.opPlacement()
        let sorted = times.sorted(), median = quantile(sorted, 0.5), n = bundle.outputShape[2]
        let student = bundle.manifest["student"] as? [String: Any] ?? [:]
        let quality = psnr(frames, bundle.reference)
        let record = ProfileRecord(
            model: ((student["checkpoint"] as? String) ?? "").components(separatedBy: "/").last ?? "",
            modelSha256: student["sha256"] as? String ?? "", artifact: bundle.manifest["name"] as? String ?? "",
            artifactSha256: bundle.manifest["sha256"] as? String ?? "", device: device, runtime: decoder.runtime,
            runtimeVersion: UIDevice.current.systemVersion, precision: bundle.meta.precision,
            computeUnit: decoder.unitName, inputShape: bundle.meta.latents.shape, frames: n,
            latency: .init(medianMs: median, p10Ms: quantile(sorted, 0.1), p90Ms: quantile(sorted, 0.9)),
            fps: Double(n) / (median / 1000), source: "measured-device-app", status: "ok",
            precisionMeaning: bundle.manifest["precision_meaning"] as? String ?? "", runs: runs, warmup: warmup,
            threads: nil, firstLoadMs: decoder.firstLoadMs, warmLoadMs: decoder.warmLoadMs, firstInferenceMs: firstMs,
            peakMemoryMb: peakMemoryMb(),
            memoryMethod: "task_vm_info ledger_phys_footprint_peak (peak physical footprint of the app process)",
            hwModel: hardwareModel(), osVersion: "iOS \(UIDevice.current.systemVersion)",
            ops: .init(delegated: placement.delegated, total: placement.total),
            notes: "input: \(bundle.inputLatents) latents; PSNR vs fp32 reference \(String(format: "%.1f", quality)) dB; "
                + decoder.loadNote + (placement.total == nil ? "; op placement not reported by the runtime"
                    : "; ops = MLComputePlan preferred-device placement on \(decoder.unitName)"))
        return (record, frames, quality)
    }

    static func write(_ record: ProfileRecord) throws -> URL {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let dir = FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0]
        let url = dir.appendingPathComponent("\(record.artifact)-\(record.device)-\(record.computeUnit).json")
        try encoder.encode(record).write(to: url, options: .atomic)
        return url
    }
}
