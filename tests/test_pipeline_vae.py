"""A student as `pipe.vae` of real diffusers pipelines (tiny transformers, prompt embeddings given): the video a
pipeline decodes is the student's decode of the latents the same pipeline returns with output_type="latent"."""

import json

import pytest
import torch
from conftest import randomize
from diffusers import FlowMatchEulerDiscreteScheduler

from turbovaed import presets, teachers
from turbovaed.io import InputError, TurboVAEDError
from turbovaed.metrics import psnr
from turbovaed.pipeline_vae import StudentVAE, decode_latents, preview, raw_latents
from turbovaed.stream import decode_tiled
from turbovaed.student import StudentDecoder


def student_folder(tmp_path, family: str):
    teacher = teachers.build_tiny(family)
    student = randomize(StudentDecoder(presets.student_config(teacher, mini=True)), std=0.05).eval()
    folder = student.save_pretrained(tmp_path / family, extra_files={
        "latent_norm.json": json.dumps(teacher.norm.to_dict())})
    return student, folder


def wan_pipeline(vae, channels: int = 4):
    from diffusers import WanPipeline, WanTransformer3DModel

    torch.manual_seed(0)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                        in_channels=channels, out_channels=channels, text_dim=32, freq_dim=256, ffn_dim=32,
                                        num_layers=1, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                        rope_max_seq_len=32)
    return WanPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0))


def hunyuan_pipeline(vae):
    from diffusers import HunyuanVideoPipeline, HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2,
                                                 attention_head_dim=10, num_layers=1, num_single_layers=1,
                                                 num_refiner_layers=1, patch_size=1, patch_size_t=1,
                                                 guidance_embeds=True, text_embed_dim=32, pooled_projection_dim=8,
                                                 rope_axes_dim=(2, 4, 4))
    return HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
                                scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder_2=None, tokenizer_2=None)


def ltx_pipeline(vae):
    from diffusers import LTXPipeline, LTXVideoTransformer3DModel

    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                             num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
                                             num_layers=1, caption_channels=32)
    return LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                       transformer=transformer)


def run_twice(pipe, family: str, size: int, frames: int, **extra):
    """The same denoising twice: decoded by pipe.vae (frames (B, T, 3, H, W) in [0, 1]) and as latents."""
    embeds = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(1))
    kw = dict(prompt_embeds=embeds, height=size, width=size, num_frames=frames, num_inference_steps=2,
              guidance_scale=1.0, **extra)
    if family == "ltx":
        kw["prompt_attention_mask"] = torch.ones(1, 8, dtype=torch.long)
    if family == "hunyuan":
        kw.update(pooled_prompt_embeds=torch.randn(1, 8), prompt_attention_mask=torch.ones(1, 8, dtype=torch.long))
    video = pipe(**kw, output_type="pt", generator=torch.Generator().manual_seed(0)).frames
    latents = pipe(**kw, output_type="latent", generator=torch.Generator().manual_seed(0)).frames
    return video, latents


def as_video(frames: torch.Tensor) -> torch.Tensor:
    """Decoder frames (B, 3, T, H, W) in [-1, 1] as a pipeline's output_type="pt" gives them."""
    return ((frames.clamp(-1, 1) + 1) / 2).permute(0, 2, 1, 3, 4)


@pytest.mark.parametrize("family,build,size,frames", [("wan21", wan_pipeline, 32, 9), ("ltx", ltx_pipeline, 64, 9),
                                                      ("hunyuan", hunyuan_pipeline, 32, 9)])
def test_a_student_decodes_inside_the_pipeline_exactly_as_on_its_own(tmp_path, family, build, size, frames):
    """The video a pipeline decodes through the student is the student's decode of the latents the pipeline
    returns (output_type="latent"), de-normalised with the teacher's statistics as the pipeline does; the
    output_type="latent" route (whole and streamed) and the preview callback give the same frames."""
    student, folder = student_folder(tmp_path, family)
    vae = StudentVAE.from_student(folder)
    pipe = build(vae)
    shown = []
    video, latents = run_twice(pipe, family, size, frames,
                               callback_on_step_end=preview(vae, lambda step, f: shown.append((step, f)), frames,
                                                            size, size, every=1))
    if family == "ltx":
        assert latents.dim() == 3  # LTX returns packed (B, S, D) latents
    z = raw_latents(pipe, latents, frames, size, size)
    assert z.shape[1:3] == (student.config.latent_channels, student.config.latents_for(frames))
    with torch.no_grad():
        expected = student(z)
    assert video.shape == (1, frames, 3, size, size)
    assert torch.allclose(video, as_video(expected), atol=1e-5)
    whole = decode_latents(vae, pipe, latents, frames, size, size)
    streamed = decode_latents(vae, pipe, latents, frames, size, size, stream=True)
    assert torch.allclose(whole, expected.clamp(-1, 1), atol=1e-5) and torch.allclose(streamed, whole, atol=1e-4)
    assert [step for step, _ in shown] == [0, 1, 0, 1]  # both runs, every step
    assert torch.allclose(shown[-1][1], whole, atol=1e-5)  # the last preview is the final video


def test_a_decoder_file_people_use_replaces_the_pipelines_vae(tmp_path):
    """taew2_1 (the published names and shapes, random values) as a WanPipeline's VAE: TAEHV decodes the diffusion
    model's latents as they are, so the pipeline's de-normalisation must do nothing (statistics 0 and 1); LightTAE
    takes de-normalised latents, with the pipeline's own statistics (like=pipe.vae)."""
    from diffusers import AutoencoderKLWan
    from test_decoders import random_file

    from turbovaed import decoders

    wan = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.1 * i for i in range(16)],
                           latents_std=[1.0 + 0.1 * i for i in range(16)])
    pipe = wan_pipeline(wan, channels=16)
    path = random_file("taew2_1", tmp_path)
    light = random_file("taew2_1", tmp_path, stem="lighttaew2_1")
    pipe.vae = StudentVAE.from_decoder_file(path)
    assert pipe.vae.config.latents_mean == [0.0] * 16 and pipe.vae.config.latents_std == [1.0] * 16
    video, latents = run_twice(pipe, "wan21", 32, 9)
    with torch.no_grad():
        expected = decoders.load(path).canonical()(latents)  # the pipeline's latents, as they are
    assert torch.allclose(video, as_video(expected), atol=1e-5)
    with pytest.raises(InputError, match="pass like=pipe.vae"):
        StudentVAE.from_decoder_file(light)
    pipe.vae = StudentVAE.from_decoder_file(light, like=wan)
    assert pipe.vae.config.latents_mean == pytest.approx(wan.config.latents_mean)
    video, latents = run_twice(pipe, "wan21", 32, 9)
    raw = latents * torch.tensor(wan.config.latents_std).view(1, 16, 1, 1, 1) + torch.tensor(
        wan.config.latents_mean).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        expected = decoders.load(light).canonical()(raw)
    assert torch.allclose(video, as_video(expected), atol=1e-5)
    streamed = decode_latents(StudentVAE.from_decoder_file(path), pipe, latents, 9, 32, 32, stream=True)
    with torch.no_grad():
        whole = decoders.load(path).canonical()(latents).clamp(-1, 1)
    assert streamed.shape == whole.shape and (streamed - whole).abs().max() < 1e-4, (streamed - whole).abs().max()


def test_pipeline_vae_attributes_tiling_and_refusals(tmp_path):
    student, folder = student_folder(tmp_path, "hunyuan")
    vae = StudentVAE.from_student(folder)
    assert (vae.config.scaling_factor, vae.config.z_dim, vae.spatial_compression_ratio) == (0.476986, 4, 8)
    assert vae.config.timestep_conditioning is False and vae.dtype == torch.float32
    z = torch.randn(1, 4, 2, 12, 16)
    whole = vae.decode(z).sample
    vae.enable_tiling(6)
    tiled = vae.decode(z, return_dict=False)[0]
    with torch.no_grad():  # the project's spatial tiles (blended overlaps), not the whole clip's exact values
        expected = decode_tiled(lambda zt, _: student(zt), z, 6, 2, 8).clamp(-1, 1)
    assert torch.allclose(tiled, expected, atol=1e-6) and psnr(tiled, whole) > 25
    with pytest.raises(TurboVAEDError, match="decodes only"):
        vae.encode(torch.zeros(1, 3, 5, 64, 64))
    (folder / "latent_norm.json").unlink()
    with pytest.raises(InputError, match="no latent_norm.json"):
        StudentVAE.from_student(folder)
    assert StudentVAE.from_student(folder, like=vae).config.scaling_factor == 0.476986  # the pipeline's own


def test_model_cpu_offload_hooks_the_decode(tmp_path):
    """pipe.enable_model_cpu_offload() hooks the VAE's decode (the method pipelines call, not forward): the hook
    runs before it and the video is the same as without offloading."""
    _, folder = student_folder(tmp_path, "wan21")
    pipe = wan_pipeline(StudentVAE.from_student(folder))
    video, _ = run_twice(pipe, "wan21", 32, 9)
    pipe.enable_model_cpu_offload(device="cpu")  # what a GPU user calls with device="cuda"
    hook, calls = pipe.vae._hf_hook, []
    real = hook.pre_forward
    hook.pre_forward = lambda module, *a, **k: (calls.append(module), real(module, *a, **k))[1]
    offloaded, _ = run_twice(pipe, "wan21", 32, 9)
    assert calls == [pipe.vae] and torch.equal(offloaded, video)
