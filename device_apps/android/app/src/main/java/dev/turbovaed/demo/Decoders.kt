package dev.turbovaed.demo

import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import org.tensorflow.lite.Interpreter

/** One decode call: latents (B, C, T, h, w) -> frames (B, 3, T', H, W) in [-1, 1], flattened. */
interface FrameDecoder : AutoCloseable {
    val runtime: String
    val runtimeVersion: String
    val computeUnit: String
    fun decode(latents: FloatArray, shape: LongArray): FloatArray
}

/** ExecuTorch .pte with the XNNPACK delegate (CPU). */
class ExecuTorchDecoder(model: File) : FrameDecoder {
    private val module = Module.load(model.absolutePath)
    override val runtime = "executorch"
    override val runtimeVersion = "1.5.1"
    override val computeUnit = "cpu/xnnpack"
    override fun decode(latents: FloatArray, shape: LongArray): FloatArray =
        module.forward(EValue.from(Tensor.fromBlob(latents, shape)))[0].toTensor().dataAsFloatArray
    override fun close() = module.destroy()
}

/** LiteRT .tflite through the Interpreter API (XNNPACK delegate on by default). Full-integer int8
 *  models take int8 input: (de)quantize with the tensors' own scale / zero point. */
class LiteRtDecoder(model: File, threads: Int) : FrameDecoder {
    private val interpreter = Interpreter(model, Interpreter.Options().setNumThreads(threads))
    override val runtime = "litert"
    override val runtimeVersion = "1.4.0"
    override val computeUnit = "cpu/xnnpack"
    override fun decode(latents: FloatArray, shape: LongArray): FloatArray {
        val inT = interpreter.getInputTensor(0)
        val outT = interpreter.getOutputTensor(0)
        val input = ByteBuffer.allocateDirect(inT.numBytes()).order(ByteOrder.nativeOrder())
        if (inT.dataType().toString() == "FLOAT32") {
            input.asFloatBuffer().put(latents)
        } else {
            val q = inT.quantizationParams()
            for (v in latents) input.put(Math.round(v / q.scale + q.zeroPoint).coerceIn(-128, 127).toByte())
        }
        val output = ByteBuffer.allocateDirect(outT.numBytes()).order(ByteOrder.nativeOrder())
        interpreter.run(input, output)
        output.rewind()
        val n = outT.numElements()
        return if (outT.dataType().toString() == "FLOAT32") {
            FloatArray(n).also { output.asFloatBuffer().get(it) }
        } else {
            val q = outT.quantizationParams()
            FloatArray(n) { (output.get().toInt() - q.zeroPoint) * q.scale }
        }
    }
    override fun close() = interpreter.close()
}
