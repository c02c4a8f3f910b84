"""The shape a sampler has in this pack: a schedule of timesteps and one update per timestep.

Families differ in everything else (DDIM over integer timesteps with eta and a generator; the MS-Vid2Vid
SDE solver; an EDM/Euler sampler over sigmas for StreamingSVD), so the protocol fixes only what a
denoising loop needs to be written once:

    x = initial noise
    for t in sampler.timesteps(steps):
        x = sampler.step(model(x, t), t, x, ...)

It is structural (`typing.Protocol`): a sampler implements it by having these two methods, without
importing this module. Extra arguments of `step` (the step count, eta, a generator) are the sampler's own.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Sampler(Protocol):
    def timesteps(self, steps: int) -> torch.Tensor:
        """The `steps` timesteps (or noise levels) to visit, first to last: the values `step` takes as `t`."""
        ...

    def step(self, model_output: torch.Tensor, t, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """x at `t` and the model's output for it (in the sampler's parameterisation, e.g. epsilon) ->
        x at the next timestep."""
        ...
