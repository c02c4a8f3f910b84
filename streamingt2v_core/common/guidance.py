"""Classifier-free guidance, written once for every family.

Every sampler in the pack guides the same way (official stage 1, stage 2 and the MS-Vid2Vid refiner):
the unconditional prediction plus `scale` times the conditional minus the unconditional one. The
refiner then rescales the guided prediction towards the conditional one's standard deviation
(official `rescale`, 0.2), which keeps strong guidance from over-saturating.
"""
from __future__ import annotations

import torch


def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """uncond + scale * (cond - uncond), in this order (the official rounding)."""
    return uncond + scale * (cond - uncond)


def rescale(guided: torch.Tensor, cond: torch.Tensor, factor: float) -> torch.Tensor:
    """Mix `guided` with itself scaled to `cond`'s standard deviation per sample (over every dimension but
    the batch): factor 0 leaves it, factor 1 matches the std fully."""
    if not factor:
        return guided
    dims = tuple(range(1, guided.ndim))
    ratio = cond.std(dim=dims, keepdim=True) / (guided.std(dim=dims, keepdim=True) + 1e-12)
    return guided * (factor * ratio + (1 - factor))
