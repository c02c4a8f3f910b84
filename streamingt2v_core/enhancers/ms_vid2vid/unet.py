"""The MS-Vid2Vid-XL UNet on diffusers' UNet3DConditionModel, with the two layers it computes differently.

Downsample pads (2, 1) instead of 1, and Upsample doubles with nearest then crops one row top and bottom.
Hence the latent height must be 2 mod 8 and the width 0 mod 8 (720x1280 pixels -> 90x160 latents).
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ...common.unet3d import infer_unet3d_config
from ...common.weights import CheckpointError
from .files import SOURCES_FIX
from .keys import is_official_unet, official_layers_per_block, official_shapes_as_diffusers

# What the shapes cannot tell: the head size when there is no initial temporal transformer (official 64).
_UNET_BASE = dict(attention_head_dim=64, norm_num_groups=32)
_FROM_SHAPES = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types",
                "up_block_types", "cross_attention_dim")


def infer_unet_config(state: Mapping[str, torch.Tensor], config: dict | None = None) -> dict:
    """UNet3DConditionModel kwargs from the official or diffusers tensor shapes (CheckpointError if incomplete).

    Official key names are renamed to diffusers' first, so the architecture is read by the pack's one
    UNet3D inferrer (common.unet3d). The attention head size comes from `config` (the size config hook:
    unet.kwargs.head_dim, or a diffusers config's attention_head_dim), else from the initial temporal
    transformer (8 heads; official 64).
    """
    try:
        return _infer_unet_config(state, config)
    except (KeyError, ValueError, ZeroDivisionError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"the refiner UNet weights are incomplete or not a 3-D UNet (no {exc}); "
                           f"{SOURCES_FIX}") from None


def _infer_unet_config(state: Mapping[str, torch.Tensor], config: dict | None = None) -> dict:
    kw = ((config or {}).get("unet") or {}).get("kwargs") or {}
    head_dim = kw.get("head_dim", (config or {}).get("attention_head_dim"))
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if is_official_unet(state):
        shapes = official_shapes_as_diffusers(shapes, official_layers_per_block(shapes))
    cfg = infer_unet3d_config(shapes, base=_UNET_BASE)
    missing = next((name for name in _FROM_SHAPES if name not in cfg), None)
    if missing is not None:
        raise KeyError(missing)
    if not any(t.startswith("CrossAttn") for t in cfg["down_block_types"]):
        raise CheckpointError("the refiner UNet has no cross-attention layers; " + SOURCES_FIX)
    if head_dim is not None:
        cfg["attention_head_dim"] = head_dim
    out = {name: cfg[name] for name in _FROM_SHAPES}
    for name in ("block_out_channels", "down_block_types", "up_block_types"):
        out[name] = tuple(out[name])
    out.update(attention_head_dim=int(cfg["attention_head_dim"]), norm_num_groups=cfg["norm_num_groups"])
    return out


class CroppedUpsample(nn.Module):
    """Official MS-Vid2Vid Upsample (`dims=2.0`): nearest x2, crop one row top and bottom, 3x3 conv."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")[..., 1:-1, :]
        return self.conv(x)


def build_unet(unet_config: dict, official_resampling: bool = True):
    """diffusers UNet3DConditionModel; `official_resampling` applies the two MS-Vid2Vid layer fixes."""
    from diffusers import UNet3DConditionModel

    unet = UNet3DConditionModel(**unet_config)
    if official_resampling:
        apply_official_resampling(unet)
    return unet.eval().requires_grad_(False)


def apply_official_resampling(unet) -> None:
    for block in unet.down_blocks:
        for ds in block.downsamplers or []:
            ds.conv.padding = (2, 1)  # 2 rows top/bottom, 1 column left/right
    for block in unet.up_blocks:
        if block.upsamplers:
            block.upsamplers[0] = CroppedUpsample(block.upsamplers[0].conv)


def meta_unet(config, dtype: torch.dtype):
    """The UNet of a diffusers `config` on the meta device (no weights, no memory), with the official
    resampling, in `dtype`: what activation estimates run on (blending.sdedit.chunk_activation_bytes)."""
    from diffusers import UNet3DConditionModel

    with torch.device("meta"):
        unet = UNet3DConditionModel.from_config(config)
    apply_official_resampling(unet)
    return nn.Module.to(unet, dtype).eval().requires_grad_(False)  # diffusers' own .to() warns here


def check_latent_size(h: int, w: int) -> None:
    if h % 8 != 2 or w % 8 != 0:
        raise ValueError(f"MS-Vid2Vid latents must be h = 2 mod 8 and w = 0 mod 8 (pixels: H = 16 mod 64, W = 0 mod 64,"
                         f" e.g. 720x1280 -> 90x160); got {h}x{w}")
