package dev.turbovaed.demo

import android.graphics.Bitmap
import android.os.Bundle
import android.os.Handler
import android.os.Looper
import android.widget.Button
import android.widget.ImageView
import android.widget.LinearLayout
import android.widget.TextView
import androidx.appcompat.app.AppCompatActivity
import java.io.File
import kotlin.concurrent.thread

/** Decode the bundled latents once and play the frames; benchmark (writes a profile record JSON) from the
 *  button or at launch with `--ez benchmark true`. Intent extras: device (a profiles/devices id), runs,
 *  warmup, threads (ExecuTorch / XNNPACK), unit (LiteRT: cpu | gpu). */
class MainActivity : AppCompatActivity() {
    private lateinit var image: ImageView
    private lateinit var status: TextView

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        image = ImageView(this)
        status = TextView(this)
        val runs = intent.getIntExtra("runs", 20)
        val warmup = intent.getIntExtra("warmup", 3)
        val threads = intent.getIntExtra("threads", 4)
        val unit = intent.getStringExtra("unit") ?: "cpu"
        val device = intent.getStringExtra("device") ?: "pixel-8"  // an id from profiles/devices/
        val bench = Button(this).apply { text = "benchmark ($warmup warm-up + $runs runs, $threads threads)" }
        setContentView(LinearLayout(this).apply {
            orientation = LinearLayout.VERTICAL
            addView(status); addView(image, LinearLayout.LayoutParams(768, 768)); addView(bench)
        })
        bench.setOnClickListener { thread { benchmark(device, runs, warmup, threads, unit) } }
        thread {
            if (intent.getBooleanExtra("benchmark", false)) benchmark(device, runs, warmup, threads, unit)
            else show(unit, threads)  // the launch decode: shown, never written as a record
        }
    }

    private fun open(bundle: AppBundle, unit: String, threads: Int): FrameDecoder = when (bundle.backend) {
        "executorch" -> ExecuTorchDecoder(bundle.modelFile, threads)
        "litert" -> LiteRtDecoder(bundle.modelFile, unit, bundle.manifest)
        else -> error("this app runs ExecuTorch and LiteRT bundles, not ${bundle.backend}")
    }

    private fun show(unit: String, threads: Int) {
        val bundle = AppBundle(this)
        open(bundle, unit, threads).use { decoder ->
            val frames = decoder.decode(bundle.latents, bundle.latentShape)
            val shape = bundle.manifest.getJSONArray("outputs").getJSONObject(0).getJSONArray("shape")
            runOnUiThread {
                status.text = "${decoder.runtime} ${bundle.precision}: decoded once (benchmark: press the button)"
                play(frames, shape.getInt(2), shape.getInt(3), shape.getInt(4))
            }
        }
    }

    private fun benchmark(device: String, runs: Int, warmup: Int, threads: Int, unit: String) {
        val bundle = AppBundle(this)
        val peakBefore = Benchmark.peakRssMbNow()
        val t0 = System.nanoTime()
        val decoder = open(bundle, unit, threads)  // includes ExecuTorch's loadMethod / LiteRT's compilation
        val loadMs = (System.nanoTime() - t0) / 1e6
        decoder.use {
            val b = Benchmark(bundle, it, device)
            val record = b.run(runs, warmup, loadMs, threads, peakBefore)
            val out = File(getExternalFilesDir(null), "${bundle.manifest.getString("name")}-$device.json")
            val tmp = File(out.path + ".tmp")
            tmp.writeText(record.toString(1))
            check(tmp.renameTo(out)) { "could not write $out" }
            val shape = bundle.manifest.getJSONArray("outputs").getJSONObject(0).getJSONArray("shape")
            runOnUiThread {
                status.text = "${it.runtime} ${bundle.precision} on ${it.computeUnit}: %.1f ms/decode, PSNR %.1f dB\nrecord: %s"
                    .format(record.getJSONObject("latency").getDouble("median_ms"), b.psnr(), out.path)
                play(b.lastFrames, shape.getInt(2), shape.getInt(3), shape.getInt(4))
            }
        }
    }

    /** frames: (1, 3, T, H, W) in [-1, 1]; shown at 8 fps. */
    private fun play(frames: FloatArray, t: Int, h: Int, w: Int) {
        val bitmaps = List(t) { f ->
            val px = IntArray(h * w) { i ->
                fun c(ch: Int) = ((frames[(ch * t + f) * h * w + i] + 1f) * 127.5f).toInt().coerceIn(0, 255)
                (0xFF shl 24) or (c(0) shl 16) or (c(1) shl 8) or c(2)
            }
            Bitmap.createBitmap(px, w, h, Bitmap.Config.ARGB_8888)
        }
        val handler = Handler(Looper.getMainLooper())
        var i = 0
        handler.post(object : Runnable {
            override fun run() { image.setImageBitmap(bitmaps[i]); i = (i + 1) % t; handler.postDelayed(this, 125) }
        })
    }
}
