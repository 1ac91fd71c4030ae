package dev.turbovaed.demo

import android.content.Context
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import org.json.JSONObject

/** A turbovaed app bundle (`turbovaed export RECIPE --bundle`) copied into assets/bundle/. */
class AppBundle(context: Context, dir: String = "bundle") {
    val meta: JSONObject
    val manifest: JSONObject
    val modelFile: File
    val latents: FloatArray
    val latentShape: LongArray
    val reference: FloatArray

    init {
        val assets = context.assets
        fun text(name: String) = assets.open("$dir/$name").bufferedReader().use { it.readText() }
        fun floats(name: String): FloatArray {
            val bytes = assets.open("$dir/$name").use { it.readBytes() }
            val out = FloatArray(bytes.size / 4)
            ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(out)
            return out
        }
        meta = JSONObject(text("bundle.json"))
        require(meta.getString("format") == "turbovaed-app-bundle") { "assets/$dir is not a turbovaed app bundle" }
        manifest = JSONObject(text(meta.getString("manifest")))
        require(!meta.has("stream")) {
            "assets/$dir is a streaming step-graph bundle (inputs: latents chunk, first, states); this app decodes " +
                "whole-clip bundles only: export a recipe without shape.stream_chunk"
        }
        val latentsMeta = meta.getJSONObject("latents")
        latents = floats(latentsMeta.getString("file"))
        latentShape = LongArray(latentsMeta.getJSONArray("shape").length()) { latentsMeta.getJSONArray("shape").getLong(it) }
        reference = floats(meta.getJSONObject("reference_frames").getString("file"))
        // Runtimes want a file path: copy the artifact out of the APK once per artifact content. The cache
        // name carries the manifest's sha256, so a swapped bundle never times a stale model; the copy is
        // written to a temp file and renamed, so a killed copy never leaves a truncated model behind.
        val artifact = meta.getString("artifact")
        modelFile = File(context.filesDir, "${manifest.getString("sha256").take(16)}-$artifact")
        if (!modelFile.exists()) {
            val tmp = File(context.filesDir, "${modelFile.name}.tmp")
            assets.open("$dir/$artifact").use { src -> tmp.outputStream().use { src.copyTo(it) } }
            check(tmp.renameTo(modelFile)) { "could not move the copied model into place: $modelFile" }
        }
    }

    val backend: String get() = meta.getString("backend")
    val precision: String get() = meta.getString("precision")
    /** "normalized" (a diffusion pipeline's output; the graph de-normalises) or "raw" VAE latents. */
    val inputLatents: String get() = manifest.optString("input_latents", "raw")
}
