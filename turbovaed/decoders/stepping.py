"""Driving a causal decoder's step graph: one latent frame per call, the states carried between calls, the
`first` flag where the graph takes one, the stream's first frames dropped as published. One loop for the
eager step graphs, the exported artifacts' runners (same I/O) and `decode --stream`."""

from __future__ import annotations

import torch


class StepStream:
    """A stream through `step` (its `initial_states`, `frames_to_trim`, optional `takes_first`), each call run
    through `run` (default: the step graph itself). Call it on consecutive (B, C, T, h, w) latent chunks."""

    def __init__(self, step, run=None) -> None:
        self.step, self.run, self.states, self.calls = step, run or step, None, 0

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        frames = []
        for t in range(latents.shape[2]):
            latent = latents[:, :, t:t + 1]
            if self.states is None:
                self.states = self.step.initial_states(latent)
            first = [torch.full((1,), float(self.calls == 0))] if getattr(self.step, "takes_first", False) else []
            y, *self.states = self.run(latent, *first, *self.states)
            frames.append(y[:, :, self.step.frames_to_trim:] if self.calls == 0 else y)
            self.calls += 1
        return torch.cat(frames, 2)
