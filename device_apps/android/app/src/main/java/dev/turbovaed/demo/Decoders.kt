package dev.turbovaed.demo

import com.google.ai.edge.litert.Accelerator
import com.google.ai.edge.litert.CompiledModel
import java.io.File
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.json.JSONObject
import org.pytorch.executorch.Tensor

/** One decode call: latents (B, C, T, h, w) -> frames (B, 3, T', H, W) in [-1, 1], flattened.
 *  Construction is the load: it includes whatever the runtime does before the first call can run. */
interface FrameDecoder : AutoCloseable {
    val runtime: String
    val runtimeVersion: String
    val computeUnit: String
    fun decode(latents: FloatArray, shape: LongArray): FloatArray
}

/** ExecuTorch .pte with the XNNPACK delegate (CPU), `threads` in XNNPACK's pool. Module.load is lazy:
 *  loadMethod("forward") (program parse, delegate init, weight packing) runs here so the load timer sees it. */
class ExecuTorchDecoder(model: File, threads: Int) : FrameDecoder {
    private val module = Module.load(model.absolutePath, Module.LOAD_MODE_MMAP, threads).also { it.loadMethod("forward") }
    override val runtime = "executorch"
    override val runtimeVersion = BuildConfig.EXECUTORCH_VERSION
    override val computeUnit = "cpu/xnnpack"
    override fun decode(latents: FloatArray, shape: LongArray): FloatArray =
        module.forward(EValue.from(Tensor.fromBlob(latents, shape)))[0].toTensor().dataAsFloatArray
    override fun close() = module.destroy()
}

/** LiteRT 2.x CompiledModel (the API of the ai-edge-litert 2.x the exporter verifies with) on the CPU
 *  (XNNPACK) or GPU accelerator. Full-integer int8 graphs take and return int8: the manifest's inputs /
 *  outputs give each tensor's dtype and scale / zero point. */
class LiteRtDecoder(model: File, unit: String, manifest: JSONObject) : FrameDecoder {
    private val input = manifest.getJSONArray("inputs").getJSONObject(0)
    private val output = manifest.getJSONArray("outputs").getJSONObject(0)
    private val accelerator = when (unit) {
        "cpu" -> Accelerator.CPU
        "gpu" -> Accelerator.GPU
        else -> error("LiteRT unit must be cpu or gpu, not $unit")
    }
    private val compiled = CompiledModel.create(model.absolutePath, CompiledModel.Options(accelerator))
    private val inputs = compiled.createInputBuffers()
    private val outputs = compiled.createOutputBuffers()
    override val runtime = "litert"
    override val runtimeVersion = BuildConfig.LITERT_VERSION
    override val computeUnit = if (unit == "gpu") "gpu" else "cpu/xnnpack"
    override fun decode(latents: FloatArray, shape: LongArray): FloatArray {
        if (input.getString("dtype") == "int8") {
            val q = input.getJSONObject("quantization")
            val scale = q.getDouble("scale").toFloat(); val zero = q.getInt("zero_point")
            inputs[0].writeInt8(ByteArray(latents.size) { Math.round(latents[it] / scale + zero).coerceIn(-128, 127).toByte() })
        } else {
            inputs[0].writeFloat(latents)
        }
        compiled.run(inputs, outputs)
        if (output.getString("dtype") != "int8") return outputs[0].readFloat()
        val q = output.getJSONObject("quantization")
        val scale = q.getDouble("scale").toFloat(); val zero = q.getInt("zero_point")
        val raw = outputs[0].readInt8()
        return FloatArray(raw.size) { (raw[it] - zero) * scale }
    }
    override fun close() {
        inputs.forEach { it.close() }
        outputs.forEach { it.close() }
        compiled.close()
    }
}
