"""The MS-Vid2Vid-XL UNet on diffusers' UNet3DConditionModel, with the two layers it computes differently.

Downsample pads (2, 1) instead of 1, and Upsample doubles with nearest then crops one row top and bottom.
Hence the latent height must be 2 mod 8 and the width 0 mod 8 (720x1280 pixels -> 90x160 latents).
"""
from __future__ import annotations

import re
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ...common.state_dict import BUILD_ERRORS
from ...common.unet3d import count_indices, infer_unet3d_config, shape_dim
from ...common.weights import CheckpointError
from .files import SHAPE_FIX, SOURCES_FIX, config_value
from .keys import is_official_unet, official_layers_per_block, official_shapes_as_diffusers, official_to_diffusers_key

# What the shapes cannot tell: the head size when there is no initial temporal transformer (official 64).
_UNET_BASE = dict(attention_head_dim=64, norm_num_groups=32)
_FROM_SHAPES = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types",
                "up_block_types", "cross_attention_dim")


# Where each architecture number is read: the diffusers key(s) and the dims a usable one has.
_CROSS_ATTN_KEY = re.compile(r"down_blocks\.\d+\.attentions\.0\.transformer_blocks\.0\.attn2\.to_k\.weight")


def _read_from(name: str, shapes: Mapping[str, tuple]) -> tuple[list[str], int]:
    if name == "in_channels":
        return ["conv_in.weight"], 4
    if name == "out_channels":
        return ["conv_out.weight"], 4
    if name == "block_out_channels":
        return [f"down_blocks.{i}.resnets.0.conv2.weight"
                for i in range(max(1, count_indices(shapes, r"down_blocks\.(\d+)\.")))], 4
    if name == "cross_attention_dim":
        return sorted(k for k in shapes if _CROSS_ATTN_KEY.fullmatch(k))[:1] or [
            "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"], 2
    return [], 0


def _unreadable(name: str, shapes: Mapping[str, tuple], file_names: Mapping[str, str]) -> str:
    """Which key keeps `name` from being read off the shapes, by the file's own name where it has one."""
    keys, ndim = _read_from(name, shapes)
    for key in keys:
        if key not in shapes:
            return f"key {key} (diffusers name) is missing"
        if shape_dim(shapes, key, ndim, 0) is None:
            return f"key {file_names.get(key, key)} has shape {list(shapes[key])}, expected {ndim} dims"
    return "its keys are missing"


def infer_unet_config(state: Mapping[str, torch.Tensor], config: dict | None = None,
                      where="the refiner UNet weights") -> dict:
    """UNet3DConditionModel kwargs from the official or diffusers tensor shapes (CheckpointError naming `where`
    and the key that cannot be read if incomplete).

    Official key names are renamed to diffusers' first, so the architecture is read by the pack's one
    UNet3D inferrer (common.unet3d). The attention head size comes from `config` (the size config hook:
    unet.kwargs.head_dim, or a diffusers config's attention_head_dim), else from the initial temporal
    transformer (8 heads; official 64).
    """
    try:
        return _infer_unet_config(state, config, where)
    except (KeyError, ValueError, ZeroDivisionError, TypeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{where}: incomplete or not a 3-D UNet (no {exc}); {SOURCES_FIX}") from None


def _infer_unet_config(state: Mapping[str, torch.Tensor], config: dict | None, where) -> dict:
    head_dim = config_value(config, "unet", "kwargs", "head_dim", default=config_value(config, "attention_head_dim"))
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    file_names: dict[str, str] = {}  # diffusers key -> the file's official key
    if is_official_unet(state):
        layers = official_layers_per_block(shapes)
        file_names = {official_to_diffusers_key(k, layers): k for k in shapes if _has_diffusers_name(k, layers)}
        shapes = official_shapes_as_diffusers(shapes, layers)
    cfg = infer_unet3d_config(shapes, base=_UNET_BASE)
    missing = next((name for name in _FROM_SHAPES if name not in cfg), None)
    if missing is not None:
        raise CheckpointError(f"{where}: incomplete or not a 3-D UNet (its {missing} cannot be read: "
                              f"{_unreadable(missing, shapes, file_names)}); {SOURCES_FIX}")
    if not any(t.startswith("CrossAttn") for t in cfg["down_block_types"]):
        raise CheckpointError(f"{where}: the refiner UNet has no cross-attention layers; {SOURCES_FIX}")
    if head_dim is not None:
        cfg["attention_head_dim"] = head_dim
    out = {name: cfg[name] for name in _FROM_SHAPES}
    for name in ("block_out_channels", "down_block_types", "up_block_types"):
        out[name] = tuple(out[name])
    out.update(attention_head_dim=int(cfg["attention_head_dim"]), norm_num_groups=cfg["norm_num_groups"])
    return out


def _has_diffusers_name(key: str, layers: int) -> bool:
    try:
        official_to_diffusers_key(key, layers)
    except KeyError:
        return False
    return True


class CroppedUpsample(nn.Module):
    """Official MS-Vid2Vid Upsample (`dims=2.0`): nearest x2, crop one row top and bottom, 3x3 conv."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")[..., 1:-1, :]
        return self.conv(x)


def channel_keys(state: Mapping[str, torch.Tensor], unet_config: dict) -> list[str]:
    """The keys (the file's names) whose shapes gave `block_out_channels`, one per level."""
    levels = range(len(unet_config["block_out_channels"]))
    if is_official_unet(state):
        step = unet_config["layers_per_block"] + 1  # each level: its resnets, then a Downsample
        return [f"input_blocks.{i * step + 1}.0.out_layers.3.weight" for i in levels]
    return [f"down_blocks.{i}.resnets.0.conv2.weight" for i in levels]


def build_unet(unet_config: dict, official_resampling: bool = True, where=None, read_from=()):
    """diffusers UNet3DConditionModel; `official_resampling` applies the two MS-Vid2Vid layer fixes. With
    `where` (the weights the config was read from, `read_from` the keys that gave its channel widths), a config
    that builds no UNet is a CheckpointError naming them."""
    from diffusers import UNet3DConditionModel

    try:
        unet = UNet3DConditionModel(**unet_config)
    except BUILD_ERRORS as exc:
        if where is None:
            raise
        shown = {k: unet_config.get(k) for k in ("block_out_channels", "layers_per_block", "cross_attention_dim",
                                                 "attention_head_dim", "norm_num_groups")}
        keys = f", channel widths read from {', '.join(read_from)}" if read_from else ""
        raise CheckpointError(f"{where}: the tensor shapes describe no 3-D UNet ({shown}{keys}: "
                              f"{type(exc).__name__}: {exc}); {SHAPE_FIX}") from exc
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
