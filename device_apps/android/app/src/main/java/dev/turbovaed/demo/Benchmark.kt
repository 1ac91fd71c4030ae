package dev.turbovaed.demo

import android.os.Build
import java.io.File
import kotlin.math.log10
import org.json.JSONArray
import org.json.JSONObject

/** Warm-up, N timed decodes, and a profile record in turbovaed's schema (profiles/README.md). */
class Benchmark(private val bundle: AppBundle, private val decoder: FrameDecoder, private val deviceId: String) {
    var lastFrames: FloatArray = FloatArray(0)
        private set

    /** PSNR (dB, [0, 1] scale) of the decoded frames against the bundle's fp32 reference frames. */
    fun psnr(): Double {
        var se = 0.0
        for (i in lastFrames.indices) { val d = (lastFrames[i] - bundle.reference[i]) / 2.0; se += d * d }
        return 10 * log10(lastFrames.size / se)
    }

    companion object {
        /** Peak resident set (VmHWM) of this process so far, MB: what memory_method states. */
        fun peakRssMbNow(): Double = File("/proc/self/status").readLines().first { it.startsWith("VmHWM:") }
            .split(Regex("\\s+"))[1].toDouble() / 1024.0
    }

    /** The first call after the load is timed on its own (lazy allocations, GPU shader compilation) and
     *  counts as the first of the `warmup` untimed calls; then `runs` timed calls. */
    fun run(runs: Int, warmup: Int, loadMs: Double, threads: Int, peakBeforeLoadMb: Double): JSONObject {
        val f0 = System.nanoTime()
        lastFrames = decoder.decode(bundle.latents, bundle.latentShape)
        val firstMs = (System.nanoTime() - f0) / 1e6
        repeat(maxOf(0, warmup - 1)) { lastFrames = decoder.decode(bundle.latents, bundle.latentShape) }
        val times = DoubleArray(runs) {
            val t0 = System.nanoTime()
            lastFrames = decoder.decode(bundle.latents, bundle.latentShape)
            (System.nanoTime() - t0) / 1e6
        }.sorted()
        fun q(p: Double): Double { val x = (times.size - 1) * p; val lo = x.toInt(); val hi = minOf(lo + 1, times.size - 1)
            return times[lo] + (times[hi] - times[lo]) * (x - lo) }
        val frames = bundle.manifest.getJSONArray("outputs").getJSONObject(0).getJSONArray("shape").getInt(2)
        val student = bundle.manifest.getJSONObject("student")
        return JSONObject()
            .put("model", student.getString("checkpoint").substringAfterLast('/'))
            .put("model_sha256", student.optString("sha256", ""))
            .put("artifact", bundle.manifest.getString("name"))
            .put("artifact_sha256", bundle.manifest.getString("sha256"))
            .put("device", deviceId)
            .put("runtime", decoder.runtime)
            .put("runtime_version", decoder.runtimeVersion)
            .put("precision", bundle.precision)
            .put("compute_unit", decoder.computeUnit)
            .put("input_shape", JSONArray(bundle.latentShape.toList()))
            .put("frames", frames)
            .put("latency", JSONObject().put("median_ms", q(0.5)).put("p10_ms", q(0.1)).put("p90_ms", q(0.9)))
            .put("fps", frames / (q(0.5) / 1000))
            .put("source", "measured-device-app")
            .put("runs", runs)
            .put("warmup", warmup)
            // ExecuTorch sizes XNNPACK's pool from `threads`; LiteRT's CompiledModel picks its own.
            .put("threads", if (decoder.runtime == "executorch") threads else JSONObject.NULL)
            .put("status", "ok")
            .put("precision_meaning", bundle.manifest.optString("precision_meaning", ""))
            .put("first_load_ms", loadMs)
            .put("first_inference_ms", firstMs)
            .put("peak_memory_mb", peakRssMbNow() - peakBeforeLoadMb)
            .put("memory_method", "VmHWM (peak RSS, /proc/self/status) after load + runs minus VmHWM before the load")
            .put("hw_model", "${Build.MANUFACTURER} ${Build.MODEL}")
            .put("soc", if (Build.VERSION.SDK_INT >= 31) Build.SOC_MODEL else Build.HARDWARE)
            .put("os_version", "Android ${Build.VERSION.RELEASE} (API ${Build.VERSION.SDK_INT})")
            .put("ops", JSONObject().put("delegated", JSONObject.NULL).put("total", JSONObject.NULL))
            .put("notes", "input: ${bundle.inputLatents} latents; PSNR vs fp32 reference %.1f dB".format(psnr()))
    }
}
