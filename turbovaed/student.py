"""The student decoder: StudentConfig (saved as config.json next to the weights) and StudentDecoder.

Layout, top to bottom: conv_in at latent resolution -> stages of residual blocks, with a decoupled
3D pixel shuffle between stages -> RMSNorm/SiLU/conv_out at the last stage's resolution -> a final
2D depth-to-space by `patch`. Blocks are Turbo-VAED's (`block="resnet"`: RMSNorm, SiLU, dense or
depthwise-separable 3D convs) or phone-first (`block="mem"`: no norm, ReLU, 2D convs, the temporal mix
by concatenating the neighbour frame; then no norm before conv_out either). Heavy work sits at low
resolution and the full-resolution output is only a depth-to-space, which is what makes the student fast
on CPUs and NPUs.

Frame rule: with `first_frame=True` (causal teachers: LTX, Wan, Hunyuan, ...) 1+k latent frames
decode to 1 + r_t*k frames: the decoder makes r_t frames per latent and drops the first r_t-1.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from turbovaed.io import (
    CheckpointError,
    InputError,
    available_memory,
    check_memory,
    check_saved,
    load_safetensors,
    save_pretrained,
)
from turbovaed.nn import PADDING_MODES, Conv3d, MemBlock, PixelShuffle3d, ResBlock, RMSNorm, TimeCache

BLOCKS = ("resnet", "mem")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class StudentConfig:
    latent_channels: int = 16
    out_channels: int = 3
    channels: tuple[int, ...] = (128, 64)  # width of each stage, latent resolution first
    blocks: tuple[int, ...] = (2, 1)  # residual blocks per stage
    dense: tuple[bool, ...] = (True, False)  # per stage: full convs (True) or depthwise-separable
    upsample: tuple[tuple[int, int], ...] = ((2, 2),)  # (temporal, spatial) shuffle between stages
    patch: int = 4  # final spatial depth-to-space
    final_temporal: int = 2  # temporal split folded into the output conv (1 = none)
    kernel_t: int = 3
    kernel_s: int = 3
    kernel_dw: int | None = None  # k x k x k depthwise kernel of separable stages (Turbo-VAED: 5); None: kernel_t/s
    dense_upsample: tuple[bool, ...] | None = None  # per shuffle: dense conv; None: as the stage it starts from
    temporal_padding: str = "causal"
    first_frame: bool = True  # 1+k latents -> 1 + r_t*k frames (drop the first r_t - 1 frames)
    eps: float = 1e-6
    block: str = "resnet"  # BLOCKS: "resnet" (Turbo-VAED's) or "mem" (phone-first, see nn.MemBlock)

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.blocks = tuple(int(b) for b in self.blocks)
        self.dense = tuple(bool(d) for d in self.dense)
        self.upsample = tuple((int(a), int(b)) for a, b in self.upsample)
        if self.dense_upsample is not None:
            self.dense_upsample = tuple(bool(d) for d in self.dense_upsample)
        n = len(self.channels)
        problems = []
        if self.dense_upsample is not None and len(self.dense_upsample) != len(self.upsample):
            problems.append(f"dense_upsample needs one entry per shuffle ({len(self.upsample)}), "
                            f"got {len(self.dense_upsample)}")
        if n == 0 or len(self.blocks) != n or len(self.dense) != n:
            problems.append(f"channels, blocks and dense need one entry per stage (got {n}, "
                            f"{len(self.blocks)}, {len(self.dense)})")
        if len(self.upsample) != max(n - 1, 0):
            problems.append(f"upsample needs {n - 1} (temporal, spatial) pairs, got {len(self.upsample)}")
        if self.temporal_padding not in PADDING_MODES:
            problems.append(f"temporal_padding must be one of {PADDING_MODES}, got {self.temporal_padding!r}")
        if min((*self.channels, self.latent_channels, self.out_channels, self.patch, self.final_temporal,
                self.kernel_t, self.kernel_s, *(s for pair in self.upsample for s in pair)), default=1) < 1:
            problems.append("channels, factors and kernel sizes must be positive")
        if self.kernel_s % 2 == 0 or (self.kernel_dw is not None and (self.kernel_dw < 1 or self.kernel_dw % 2 == 0)):
            problems.append(f"kernel_s and kernel_dw must be odd and positive, got {self.kernel_s}, {self.kernel_dw}")
        if self.block not in BLOCKS:
            problems.append(f"block must be one of {BLOCKS}, got {self.block!r}")
        if problems:
            raise ValueError("invalid StudentConfig: " + "; ".join(problems))

    def kernels(self, dense: bool) -> tuple[int, int]:
        """(temporal, spatial) kernel of a dense or a depthwise-separable conv."""
        if dense or self.kernel_dw is None:
            return self.kernel_t, self.kernel_s
        return self.kernel_dw, self.kernel_dw

    def upsample_dense(self, i: int) -> bool:
        return self.dense[i] if self.dense_upsample is None else self.dense_upsample[i]

    @property
    def temporal_ratio(self) -> int:
        return math.prod(t for t, _ in self.upsample) * self.final_temporal

    @property
    def spatial_ratio(self) -> int:
        return math.prod(s for _, s in self.upsample) * self.patch

    def frames_for(self, latent_frames: int) -> int:
        """Output frames for a number of latent frames (the teacher's frame rule)."""
        full = latent_frames * self.temporal_ratio
        return full - (self.temporal_ratio - 1) if self.first_frame else full

    def latents_for(self, frames: int) -> int:
        """Latent frames that decode to `frames`; InputError if the frame rule cannot give that count."""
        r = self.temporal_ratio
        extra = r - 1 if self.first_frame else 0
        if frames < 1 or (frames + extra) % r:
            rule = f"1 + {r}k" if self.first_frame else f"{r}k"
            raise InputError(f"{frames} frames break the frame rule: expected {rule} frames (k >= 0)")
        return (frames + extra) // r

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> StudentConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in set(data) - known - {"preset"} if not k.startswith("_"))  # _: bookkeeping
        if unknown:
            raise CheckpointError(f"unknown StudentConfig fields {unknown}; expected a subset of {sorted(known)}")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"invalid student config: {err}") from err


class StudentDecoder(nn.Module):
    """Reference form (nn.Conv3d). `to_mobile()` gives the exact 2D-only form of the same weights."""

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.config = c = config
        p, kt, ks = c.temporal_padding, c.kernel_t, c.kernel_s
        self.conv_in = Conv3d(c.latent_channels, c.channels[0], kt, ks, padding=p)
        self.stages = nn.ModuleList(
            nn.Sequential(*[MemBlock(ch, ks, p) if c.block == "mem" else ResBlock(ch, d, *c.kernels(d), p, c.eps)
                            for _ in range(n)])
            for ch, n, d in zip(c.channels, c.blocks, c.dense)
        )
        self.upsamplers = nn.ModuleList(
            PixelShuffle3d(c.channels[i], c.channels[i + 1], st, ss, c.upsample_dense(i),
                           *c.kernels(c.upsample_dense(i)), p)
            for i, (st, ss) in enumerate(c.upsample)
        )
        self.norm_out = RMSNorm(c.channels[-1], c.eps) if c.block == "resnet" else None
        self.conv_out = PixelShuffle3d(c.channels[-1], c.out_channels, c.final_temporal, c.patch,
                                       c.dense[-1], kt, ks, p)

    def forward(self, z: torch.Tensor, return_features: bool = False, cache: TimeCache | None = None):
        """z: raw teacher latents (B, C, T, H, W) -> frames (B, 3, T', H*r_s, W*r_s), about [-1, 1].
        With a `cache`, z is one chunk of a stream (see `step`)."""
        x = self.conv_in(z, cache)
        features = []
        for i, stage in enumerate(self.stages):
            for block in stage:
                x = block(x, cache)
            features.append(x)
            if i < len(self.upsamplers):
                x = self.upsamplers[i](x, cache)
        x = self.conv_out(F.silu(self.norm_out(x)) if self.norm_out is not None else x, cache)
        x = x[:, :, dropped_frames(self.config, cache):]
        return (x, features) if return_features else x

    @torch.no_grad()
    def step(self, z: torch.Tensor, state: StreamState | None = None) -> tuple[torch.Tensor, StreamState]:
        """Decode the next chunk of a latent stream (any number >= 1 of latent frames).

        `state=None` starts a stream. Concatenating the frames of every step equals decoding the whole
        clip at once (the first chunk drops the first r_t - 1 frames, as the frame rule says)."""
        check_latents(z, self.config)
        if self.config.temporal_padding != "causal":
            raise InputError("streaming needs causal temporal padding; this student uses "
                             f"{self.config.temporal_padding!r} (each frame would depend on later latents)")
        key = stream_key(self.config, z, "reference")
        if state is None:
            state = StreamState(key)
        if not isinstance(state, StreamState):
            raise InputError(f"state must be None or the StreamState of a previous step, got {type(state).__name__}")
        state.check(key)
        # the step takes the state's tensors (releasing each as it is used: they are ~1 GB at 720p) and puts
        # the new ones back only when it succeeds; a step that fails part-way leaves a broken stream
        carried, state.tensors, state.broken = state.tensors, [], True
        cache = TimeCache(carried if state.latent_frames else None)  # [] is a later chunk when k_t = 1
        del carried
        # a copy: the first conv may keep its input as state, and the caller may reuse its buffer
        frames = self(z.to(next(self.parameters()).dtype, copy=True), cache=cache)
        state.tensors, state.latent_frames, state.broken = cache.out, state.latent_frames + z.shape[2], False
        return frames, state

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Checked inference entry point: validates the latents, then runs the reference form."""
        check_latents(z, self.config)
        return self(z.to(next(self.parameters()).dtype))

    def to_mobile(self, linear_pointwise: bool = False) -> MobileDecoder:
        return MobileDecoder(self, linear_pointwise)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | Path, extra_files: dict[str, str | bytes] | None = None) -> Path:
        """Write config.json + model.safetensors (plus any extra files) atomically."""
        return save_pretrained(self, directory, {"_class_name": "StudentDecoder", **self.config.to_dict()},
                               extra_files, WEIGHTS_NAME)

    @classmethod
    def from_pretrained(cls, directory: str | Path, weights: str = WEIGHTS_NAME) -> StudentDecoder:
        """Load a checkpoint folder; every failure is a CheckpointError naming what was expected."""
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"checkpoint folder {directory} does not exist "
                                  f"(expected a folder with {CONFIG_NAME} and {weights})")
        try:
            data = json.loads((directory / CONFIG_NAME).read_text())
        except FileNotFoundError as err:
            raise CheckpointError(f"{directory} has no {CONFIG_NAME}") from err
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{directory / CONFIG_NAME} is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise CheckpointError(f"{directory / CONFIG_NAME} must hold a JSON object")
        config = StudentConfig.from_dict(data)
        check_memory(memory_bytes(config), f"the student in {directory}",
                     f"its {CONFIG_NAME} describes a model too large to load here (channels {config.channels})")
        model = cls(config)
        state = load_safetensors(directory / weights)  # a truncated or pickled file is named as such first
        check_saved(directory / weights, data)
        load_state(model, state, directory / weights)
        return model


def dropped_frames(config: StudentConfig, cache: TimeCache | None) -> int:
    """Frames cut from the front of the output: r_t - 1 for first-frame teachers on a clip or on the first
    chunk of an eager stream; none on later chunks or in an exported step graph (its caller drops them)."""
    if not config.first_frame or (cache is not None and (cache.states is not None or cache.first is not None)):
        return 0
    return config.temporal_ratio - 1


def stream_key(config: StudentConfig, z: torch.Tensor, form: str) -> str:
    """What a stream state is only valid for: this decoder config, form, batch and latent size."""
    return json.dumps({"config": config.to_dict(), "form": form, "batch": z.shape[0], "size": list(z.shape[3:]),
                       "dtype": str(z.dtype)}, sort_keys=True)


@dataclass
class StreamState:
    """The decoder's memory between chunks: the last k_t - 1 input frames of every temporal conv."""

    key: str
    tensors: list[torch.Tensor] = field(default_factory=list)
    latent_frames: int = 0
    closed: bool = False
    broken: bool = False

    def check(self, key: str) -> None:
        if self.closed:
            raise InputError("this stream was closed; start a new one with state=None")
        if self.broken:
            raise InputError("a step of this stream failed part-way, so its state is lost; start a new one with "
                             "state=None")
        if key != self.key:
            want, got = json.loads(self.key), json.loads(key)
            diff = sorted(k for k in want if want[k] != got.get(k))
            raise InputError(f"the stream state does not belong to this decoder/input: {', '.join(diff)} differ "
                             f"(state: {', '.join(f'{k}={want[k]}' for k in diff if k != 'config')}; "
                             f"now: {', '.join(f'{k}={got[k]}' for k in diff if k != 'config')})")

    def close(self) -> None:
        """End the stream and free its memory; further steps with this state are errors."""
        self.closed, self.tensors = True, []


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """load_state_dict with one clear error for missing, unexpected or mis-shaped tensors."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise CheckpointError(f"{source} does not match the config: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, wrong shapes {shapes[:5]}")
    model.load_state_dict(state)


def check_latents(z: torch.Tensor, config: StudentConfig) -> None:
    """Reject latents the decoder cannot honour, with a message naming what was expected."""
    if not isinstance(z, torch.Tensor):
        raise InputError(f"latents must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() != 5:
        raise InputError(f"latents must be 5-D (B, C, T, H, W), got shape {tuple(z.shape)}")
    if not z.is_floating_point():
        raise InputError(f"latents must be floating point, got {z.dtype}")
    if z.shape[1] != config.latent_channels:
        raise InputError(f"latents have {z.shape[1]} channels, the decoder expects {config.latent_channels}")
    if min(z.shape) < 1:
        raise InputError(f"latents have an empty dimension: {tuple(z.shape)}")
    if z.device.type != "meta" and not torch.isfinite(z).all():  # meta: shape-only runs (FLOP counts)
        raise InputError("latents contain NaN or inf values")


class MobileDecoder(nn.Module):
    """The same decoder with 2D ops only: frames folded into the batch, Conv3d taps as summed Conv2d.

    Input and output layouts equal the reference form's, so the two are interchangeable."""

    def __init__(self, ref: StudentDecoder, linear_pointwise: bool = False) -> None:
        super().__init__()
        self.config = ref.config
        lp = linear_pointwise
        self.conv_in = ref.conv_in.to_mobile(lp)
        self.stages = nn.ModuleList(nn.ModuleList(b.to_mobile(lp) for b in stage) for stage in ref.stages)
        self.upsamplers = nn.ModuleList(u.to_mobile(lp) for u in ref.upsamplers)
        self.norm_out = ref.norm_out.to_mobile() if ref.norm_out is not None else None
        self.conv_out = ref.conv_out.to_mobile(lp)
        self.register_buffer("input_scale", None)  # set by fold_denormalization
        self.register_buffer("input_shift", None)

    def fold_denormalization(self, mean: list[float] | None, std: list[float] | None, scale: float) -> MobileDecoder:
        """Take normalised latents (a diffusion pipeline's output) directly: raw = z * std / scale + mean
        becomes the graph's first op (one multiply-add, delegated everywhere). Per-channel statistics only."""
        c = self.config.latent_channels
        for name, values in (("mean", mean), ("std", std)):
            if values is not None and len(values) != c:
                raise InputError(f"latent {name} has {len(values)} values, not one per channel ({c}): per-frame "
                                 "statistics cannot be folded into a fixed-shape graph; export with raw input")
        std_t = torch.tensor(std if std is not None else [1.0] * c)
        self.register_buffer("input_scale", (std_t / scale).view(1, c, 1, 1, 1))
        self.register_buffer("input_shift", torch.tensor(mean if mean is not None else [0.0] * c).view(1, c, 1, 1, 1))
        return self

    def forward(self, z: torch.Tensor, cache: TimeCache | None = None) -> torch.Tensor:
        if self.input_scale is not None:
            z = z * self.input_scale + self.input_shift
        b, c, t, h, w = z.shape
        x = self.conv_in(z.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), t, cache)
        for i, stage in enumerate(self.stages):
            for block in stage:
                x = block(x, t, cache)
            if i < len(self.upsamplers):
                x = self.upsamplers[i](x, t, cache)
                t = t * self.upsamplers[i].scale_t
        x = self.conv_out(F.silu(self.norm_out(x, t)) if self.norm_out is not None else x, t, cache)
        t = t * self.conv_out.scale_t
        n, c, h, w = x.shape
        x = x.reshape(b, t, c, h, w)
        drop = dropped_frames(self.config, cache)
        x = x[:, drop:] if drop else x  # a no-op slice exports as `alias`, which coremltools rejects
        return x.permute(0, 2, 1, 3, 4)


class StreamingStep(nn.Module):
    """The exportable step graph: (latents chunk, first, *states) -> (frames, *new states), all static
    shapes. `first` is a (1,) float tensor, 1.0 on the first chunk (then states may be zeros); the caller
    drops the first r_t - 1 frames of the first chunk's output (`dropped_frames` of an eager stream)."""

    def __init__(self, decoder: MobileDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, z: torch.Tensor, first: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = TimeCache(list(states), first)
        frames = self.decoder(z, cache)
        return (frames, *cache.out)

    @torch.no_grad()
    def initial_inputs(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(z, first=1, zero states): the inputs of the first chunk, state shapes found by a dry run."""
        cache = TimeCache()
        self.decoder(z, cache)
        return (z, torch.ones(1), *[torch.zeros_like(s) for s in cache.out])

    @torch.no_grad()
    def stream(self, latents: torch.Tensor, chunk: int, run=None) -> torch.Tensor:
        """Decode `latents` chunk by chunk through `run` (default: this module; or an exported artifact's
        runner taking and returning the same tensors); returns the whole clip's frames."""
        if latents.shape[2] % chunk:
            raise InputError(f"{latents.shape[2]} latent frames do not split into chunks of {chunk}")
        run = run or self
        inputs = self.initial_inputs(latents[:, :, :chunk])
        outs = []
        for i in range(0, latents.shape[2], chunk):
            first = torch.ones(1) if i == 0 else torch.zeros(1)
            frames, *states = run(latents[:, :, i:i + chunk].contiguous(), first, *inputs[2:])
            inputs = (None, None, *states)
            outs.append(frames if i else frames[:, :, dropped_frames(self.decoder.config, None):])
        return torch.cat(outs, dim=2)


def count_macs(config: StudentConfig, latent_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one decode of latents (T, h, w), counted on the meta device (no compute)."""
    with torch.device("meta"):
        model = StudentDecoder(config)
    return module_macs(model, (1, config.latent_channels, *latent_shape))


def memory_bytes(config: StudentConfig, latent_shape: tuple[int, int, int] | None = None, batch: int = 1,
                 training: bool = False) -> int:
    """Estimated peak fp32 bytes of the student (its weights alone without `latent_shape`): for inference the
    weights and the largest layer's input + output, for training the weights four more times (gradients, two Adam
    moments, EMA) and every layer's activations (what autograd keeps). Traced on the meta device: nothing is
    allocated, so a size that cannot fit is refused before it is tried."""
    with torch.device("meta"):
        model = StudentDecoder(config)
    weights = model.num_parameters()
    if latent_shape is None:
        return 4 * weights
    acts: list[int] = []

    def hook(module: nn.Module, inputs, out) -> None:
        if isinstance(out, torch.Tensor) and inputs and isinstance(inputs[0], torch.Tensor):
            acts.append(inputs[0].numel() + out.numel())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(torch.empty(1, config.latent_channels, *latent_shape, device="meta"))
    finally:
        for h in handles:
            h.remove()
    if training:
        return 4 * (5 * weights + batch * sum(acts))
    return 4 * (weights + batch * max(acts))


def check_fits(config: StudentConfig, latent_shape: tuple[int, int, int], batch: int, what: str, lower: str,
               training: bool = False, passes: int = 1, device: torch.device | str = "cpu") -> None:
    """Refuse a decode (or training step) that cannot fit in `device`'s free memory, before allocating. A cheap
    upper bound (every layer at the widest channels and the output's size) clears the common case at once; only
    above it are the layers traced (memory_bytes)."""
    with torch.device("meta"):
        model = StudentDecoder(config)
    weights = model.num_parameters()
    layers = sum(1 for m in model.modules() if not list(m.children()))
    t, h, w = latent_shape
    widest = max(max(config.channels), config.latent_channels, 3) * config.frames_for(t) * h * w \
        * config.spatial_ratio ** 2 * 2  # input + output of a layer at full size
    bound = 4 * (5 * weights + batch * layers * widest) if training else 4 * (weights + batch * widest)
    if passes * bound > available_memory(device):
        check_memory(passes * memory_bytes(config, latent_shape, batch, training), what, lower, device)


def module_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Conv, Linear and attention multiply-accumulates of model(input) for any decoder (peers too), on the meta
    device."""
    total = 0

    def hook(module: nn.Module, _inputs, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, (nn.Conv3d, nn.Conv2d)):
            total += out.numel() * module.weight[0].numel()
        elif isinstance(module, nn.Linear):
            total += out.numel() * module.in_features
        elif hasattr(module, "attention_macs"):  # the QK^T and AV products of an attention block
            total += module.attention_macs(_inputs[0])

    model = model.to("meta")
    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(torch.empty(input_shape, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return total

