"""A fixed denoiser call on a tiny-size StreamingT2V model (8x8 latents, 64x64 conditioning frames), for
tests that compare two loads of the same weights."""
from __future__ import annotations

import torch


def probe(model) -> torch.Tensor:
    """predict_noise on seeded inputs: 1 video, 16 frames, timestep 301."""
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 16, 8, 8, generator=g)
    ehs = torch.randn(1, 93, 1024, generator=g)
    cond = torch.rand(1, 8, 3, 64, 64, generator=g) * 2 - 1
    return model.predict_noise(sample, torch.tensor(301), ehs, cond)
