import SwiftUI

/// Decode the bundled latents, play the frames, benchmark on CPU / GPU / Neural Engine.
struct ContentView: View {
    @State private var status = "tap decode"
    @State private var images: [UIImage] = []
    @State private var index = 0
    @State private var unit = "ane"
    @State private var device = "iphone-16-pro"  // an id from profiles/devices/
    private let timer = Timer.publish(every: 0.125, on: .main, in: .common).autoconnect()

    var body: some View {
        VStack(spacing: 12) {
            if !images.isEmpty {
                Image(uiImage: images[index % images.count]).resizable().interpolation(.none).scaledToFit()
                    .onReceive(timer) { _ in index += 1 }
            }
            Picker("compute unit", selection: $unit) { ForEach(["cpu", "gpu", "ane"], id: \.self) { Text($0) } }
                .pickerStyle(.segmented)
            Picker("device", selection: $device) {
                ForEach(["iphone-15-pro", "iphone-16-pro", "mac-m2"], id: \.self) { Text($0) }
            }
            HStack {
                Button("decode") { Task { await go(runs: 1, warmup: 0) } }
                Button("benchmark") { Task { await go(runs: 20, warmup: 3) } }
            }
            Text(status).font(.footnote).multilineTextAlignment(.center)
        }.padding()
    }

    /// Loading, compiling and predicting run off the main actor (a detached task); only the UI update
    /// comes back to it. The single "decode" shows frames and writes no record.
    private func go(runs: Int, warmup: Int) async {
        let unitName = unit, deviceId = device, writeRecord = runs > 1
        status = "working..."
        let result = await Task.detached(priority: .userInitiated) { () -> Result<(ProfileRecord, [Float], Double, String?, [Int]), Error> in
            do {
                let bundle = try AppBundle()
                let decoder = try await makeDecoder(bundle: bundle, unit: unitName)
                let (rec, frames, quality) = try await Benchmark.run(bundle: bundle, decoder: decoder, device: deviceId,
                                                                    runs: runs, warmup: warmup)
                let url = try writeRecord ? Benchmark.write(rec).lastPathComponent : nil
                return .success((rec, frames, quality, url, bundle.outputShape))
            } catch {
                return .failure(error)
            }
        }.value
        switch result {
        case let .success((rec, frames, quality, url, shape)):
            images = ContentView.toImages(frames, shape: shape)
            status = String(format: "%@ %@: %.1f ms/prediction, PSNR %.1f dB vs fp32\n%@", unit, rec.precision,
                            rec.latency.medianMs, quality, url.map { "record: \($0)" } ?? "(decode only: no record)")
        case let .failure(error):
            status = "error: \(error.localizedDescription)"
        }
    }

    /// frames (1, 3, T, H, W) in [-1, 1] -> one UIImage per frame.
    static func toImages(_ f: [Float], shape: [Int]) -> [UIImage] {
        let (t, h, w) = (shape[2], shape[3], shape[4])
        return (0..<t).compactMap { k in
            var rgba = [UInt8](repeating: 255, count: h * w * 4)
            for i in 0..<(h * w) {
                for c in 0..<3 {
                    rgba[4 * i + c] = UInt8(max(0, min(255, ((f[(c * t + k) * h * w + i] + 1) * 127.5).rounded())))
                }
            }
            let provider = CGDataProvider(data: Data(rgba) as CFData)!
            return CGImage(width: w, height: h, bitsPerComponent: 8, bitsPerPixel: 32, bytesPerRow: 4 * w,
                           space: CGColorSpaceCreateDeviceRGB(), bitmapInfo: CGBitmapInfo(rawValue: CGImageAlphaInfo.noneSkipLast.rawValue),
                           provider: provider, decode: nil, shouldInterpolate: false, intent: .defaultIntent).map { UIImage(cgImage: $0) }
        }
    }
}
