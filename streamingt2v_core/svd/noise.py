"""The random draws of the official StreamingSVD chunk loop, from a seeded generator.

The official code draws from torch's global RNG, per autoregressive chunk exactly: `rand(1, 3, H, W)` (the
uniform conditioning augmentation of the SVD image) then `randn(25, 4, H/8, W/8)` (the initial noise,
before the sampler scales it by sqrt(1 + sigma_0^2)). Nothing else draws while a chunk is sampled. A CPU
`torch.Generator` seeded like the global one yields the same sequence, so with `manual_seed(s)` these are
the official draws after `torch.manual_seed(s)` (the official CLI's seed 33 is consumed by the model set-up
and the first chunk before chunk 1, so an official real-weights video is only reproduced by replaying that).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .config import FRAMES

LATENT_CHANNELS = 4
LATENT_FACTOR = 8


class ChunkDraw(NamedTuple):
    cond_aug_uniform: torch.Tensor  # [1, 3, H, W], U[0, 1)
    init_noise: torch.Tensor  # [frames, 4, H/8, W/8], N(0, 1)


class ChunkDraws:
    """Per chunk, `next()` draws (cond_aug_uniform, init_noise) in the official order from one generator
    (CPU; the tensors are then moved by the caller). `height`, `width`: pixels (multiples of 8)."""

    def __init__(self, generator: torch.Generator | int, height: int, width: int, frames: int = FRAMES):
        if isinstance(generator, int):
            generator = torch.Generator().manual_seed(generator)
        if height % LATENT_FACTOR or width % LATENT_FACTOR:
            raise ValueError(f"pixel size {height}x{width}: both sides must be multiples of {LATENT_FACTOR}")
        self.generator = generator
        self.height, self.width, self.frames = int(height), int(width), int(frames)
        self.chunks_drawn = 0

    def next(self) -> ChunkDraw:
        uniform = torch.rand(1, 3, self.height, self.width, generator=self.generator)
        noise = torch.randn(self.frames, LATENT_CHANNELS, self.height // LATENT_FACTOR, self.width // LATENT_FACTOR,
                            generator=self.generator)
        self.chunks_drawn += 1
        return ChunkDraw(uniform, noise)

    __next__ = next

    def __iter__(self):
        return self
