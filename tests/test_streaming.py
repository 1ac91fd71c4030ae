"""Streaming decode: chunk-by-chunk equals whole-clip decoding, in both forms, for every chunking."""

import pytest
import torch
from conftest import randomize
from hypothesis import given, settings
from hypothesis import strategies as st

from turbovaed import presets
from turbovaed.io import InputError
from turbovaed.presets import family_preset
from turbovaed.student import StreamingStep, StudentDecoder
from turbovaed.teachers import TEACHERS

# Presets covering 4x/6x/8x temporal and 8x/16x/32x spatial (all with the first-frame rule; a student
# without it is tested below).
STREAM_PRESETS = ["wan21", "ltx", "cosmos", "mochi", "hunyuan15", "magvit"]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def model_and_latents(name: str, frames: int, seed: int = 0) -> tuple[StudentDecoder, torch.Tensor]:
    config = presets.student_config(TEACHERS[name], mini=True)
    model = randomize(StudentDecoder(config), std=0.1, seed=seed).eval()
    side = max(1, 32 // config.spatial_ratio)
    z = torch.randn(1, config.latent_channels, frames, side, side, generator=torch.Generator().manual_seed(seed))
    return model, z


def stream(model: StudentDecoder, z: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    state, outs, i = None, [], 0
    for n in sizes:
        frames, state = model.step(z[:, :, i:i + n], state)
        assert frames.shape[2] == model.config.frames_for(i + n) - model.config.frames_for(i) if i else \
            model.config.frames_for(n)
        outs.append(frames)
        i += n
    state.close()
    return torch.cat(outs, dim=2)


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(STREAM_PRESETS), cuts=st.lists(st.integers(1, 4), min_size=1, max_size=6))
def test_any_chunking_equals_whole_clip(name, cuts):
    model, z = model_and_latents(name, sum(cuts))
    with torch.no_grad():
        whole = model(z)
    got = stream(model, z, cuts)
    assert got.shape == whole.shape
    assert rel_err(got, whole) <= 1e-5


@pytest.mark.parametrize("name", STREAM_PRESETS)
def test_mobile_step_graph_streams_like_the_reference(name):
    model, z = model_and_latents(name, 5, seed=1)
    with torch.no_grad():
        whole = model(z)
        got = StreamingStep(model.to_mobile().eval()).stream(z, 1)
    assert got.shape == whole.shape and rel_err(got, whole) <= 1e-5


def test_stream_state_misuse_fails_clearly():
    model, z = model_and_latents("wan21", 4)
    frames, state = model.step(z[:, :, :2])
    with pytest.raises(InputError, match="size"):
        model.step(torch.randn(1, z.shape[1], 1, z.shape[3] + 1, z.shape[4]), state)
    with pytest.raises(InputError, match="batch"):
        model.step(torch.randn(2, *z.shape[1:]), state)
    with pytest.raises(InputError, match="channels"):
        model.step(z[:, :3, :1], state)
    other = StudentDecoder(presets.student_config(TEACHERS["wan21"], mini=False)).eval()  # same latents, other decoder
    with pytest.raises(InputError, match="config"):
        other.step(z[:, :, 2:3], state)
    with pytest.raises(InputError, match="StreamState"):
        model.step(z[:, :, 2:3], {"tensors": []})
    state.close()
    with pytest.raises(InputError, match="closed"):
        model.step(z[:, :, 2:3], state)


def test_streaming_needs_causal_padding():
    config = family_preset(16, 8, 4, mini=True, temporal_padding="replicate")
    model = StudentDecoder(config).eval()
    with pytest.raises(InputError, match="causal"):
        model.step(torch.randn(1, config.latent_channels, 1, 2, 2))


def test_a_student_without_temporal_taps_streams_every_frame():
    """kernel_t = 1 leaves no state to carry: later chunks must still keep all their frames."""
    from dataclasses import replace

    config = replace(presets.student_config(TEACHERS["wan21"], mini=True), kernel_t=1)
    model = randomize(StudentDecoder(config), std=0.1).eval()
    z = torch.randn(1, config.latent_channels, 4, 4, 4)
    with torch.no_grad():
        whole = model(z)
    got = stream(model, z, [1, 2, 1])
    assert got.shape == whole.shape and rel_err(got, whole) <= 1e-5


@pytest.mark.parametrize("cuts", [[1, 1, 1], [2, 1], [3]])
def test_a_student_without_the_first_frame_rule_streams_like_the_whole_clip(cuts):
    """r_t*k frames (no 1 + r_t*k rule): no chunk drops frames, in the reference and the step-graph form."""
    config = family_preset(4, 8, 4, first_frame=False, mini=True)
    model = randomize(StudentDecoder(config), std=0.1, seed=4).eval()
    z = torch.randn(1, 4, sum(cuts), 4, 4, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        whole = model(z)
        mobile = StreamingStep(model.to_mobile().eval()).stream(z, 1)
    assert whole.shape[2] == 4 * sum(cuts)
    got = stream(model, z, cuts)
    assert got.shape == whole.shape == mobile.shape
    assert rel_err(got, whole) <= 1e-5 and rel_err(mobile, whole) <= 1e-5


def test_eager_stream_state_holds_only_the_carried_frames(monkeypatch):
    """States are copies of the last k_t - 1 frames, not views that keep a whole padded activation alive
    (about 1 GB at 720p), and a failed step leaves a stream that refuses to go on."""
    model, z = model_and_latents("wan21", 3)
    _, state = model.step(z[:, :, :2])
    for t in state.tensors:
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
        assert t.shape[2] == model.config.kernel_t - 1
    def fail(*args, **kwargs):  # the last conv fails, after the earlier ones consumed their states
        raise RuntimeError("out of memory")

    monkeypatch.setattr(model.conv_out, "forward", fail)
    with pytest.raises(RuntimeError):
        model.step(z[:, :, 2:3], state)
    monkeypatch.undo()
    with pytest.raises(InputError, match="failed part-way"):
        model.step(z[:, :, 2:3], state)
