"""Official Vid2VidSDUNet key names -> diffusers UNet3DConditionModel names.

The MS-Vid2Vid-XL UNet maps key for key onto diffusers' blocks (reference/official_refiner.md §5.4); only the
temporal proj_in/proj_out are Conv1d(k=1) officially and Linear in diffusers.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import torch

from ...common.weights import CheckpointError
from .files import SOURCES_FIX

_RES_RENAMES = (("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
                ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut."))


def _resnet_key(prefix: str, j: int, rest: str) -> str:
    if rest.startswith("temopral_conv."):  # sic, the official spelling
        return f"{prefix}.temp_convs.{j}.{rest[len('temopral_conv.'):]}"
    for old, new in _RES_RENAMES:
        if rest.startswith(old):
            return f"{prefix}.resnets.{j}.{new}{rest[len(old):]}"
    raise KeyError(rest)


def official_to_diffusers_key(key: str, layers_per_block: int = 2) -> str:
    """Rename one official Vid2VidSDUNet key to diffusers UNet3DConditionModel naming."""
    n = layers_per_block
    for old, new in (("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
                     ("input_blocks.0.0.", "conv_in."), ("input_blocks.0.1.", "transformer_in."),
                     ("out.0.", "conv_norm_out."), ("out.2.", "conv_out.")):
        if key.startswith(old):
            return new + key[len(old):]
    m = re.match(r"input_blocks\.(\d+)\.(.*)$", key)
    if m:
        i, rest = int(m.group(1)) - 1, m.group(2)
        level, j = divmod(i, n + 1)
        pre = f"down_blocks.{level}"
        if j == n:  # the Downsample closing a level
            if rest.startswith("op."):
                return f"{pre}.downsamplers.0.conv.{rest[3:]}"
            raise KeyError(key)
        return _block_member(pre, j, rest, key)
    m = re.match(r"middle_block\.(\d)\.(.*)$", key)
    if m:
        idx, rest = int(m.group(1)), m.group(2)
        if idx in (0, 3):
            return _resnet_key("mid_block", idx // 3, rest)
        return f"mid_block.{'attentions' if idx == 1 else 'temp_attentions'}.0.{rest}"
    m = re.match(r"output_blocks\.(\d+)\.(\d+)\.(.*)$", key)
    if m:
        i, mod, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        level, j = divmod(i, n + 1)
        pre = f"up_blocks.{level}"
        if mod > 0 and rest.startswith("conv."):  # the Upsample closing a level
            return f"{pre}.upsamplers.0.{rest}"
        return _block_member(pre, j, f"{mod}.{rest}", key)
    raise KeyError(key)


def _block_member(pre: str, j: int, rest: str, key: str) -> str:
    mod, _, rest = rest.partition(".")
    if mod == "0":
        return _resnet_key(pre, j, rest)
    if mod == "1":
        return f"{pre}.attentions.{j}.{rest}"
    if mod == "2":
        return f"{pre}.temp_attentions.{j}.{rest}"
    raise KeyError(key)


def _is_conv1d_proj(new_key: str, ndim: int) -> bool:
    return ndim == 3 and new_key.endswith(("proj_in.weight", "proj_out.weight"))  # temporal Conv1d(k=1) officially


def convert_official_unet(state: Mapping[str, torch.Tensor], layers_per_block: int = 2,
                          where="the refiner UNet weights") -> dict[str, torch.Tensor]:
    """Official Vid2VidSDUNet state dict -> diffusers UNet3DConditionModel state dict (Conv1d k=1 -> Linear).
    A key with no diffusers name is a CheckpointError naming `where` (the file) and the key."""
    out = {}
    for key, value in state.items():
        try:
            new = official_to_diffusers_key(key, layers_per_block)
        except KeyError:
            raise CheckpointError(f"{where}: unexpected key {key!r} in the refiner UNet weights; {SOURCES_FIX}") from None
        out[new] = value.squeeze(-1) if _is_conv1d_proj(new, value.ndim) else value
    return out


def official_shapes_as_diffusers(shapes: Mapping[str, Sequence[int]], layers_per_block: int) -> dict[str, tuple]:
    """The diffusers key and shape of every official key that has one (unknown keys are left out: the
    conversion that follows names them)."""
    out = {}
    for key, shape in shapes.items():
        try:
            new = official_to_diffusers_key(key, layers_per_block)
        except KeyError:
            continue
        out[new] = tuple(shape)[:-1] if _is_conv1d_proj(new, len(shape)) else tuple(shape)
    return out


def official_layers_per_block(keys) -> int:
    """Resnets per level of an official UNet, read off its key names (each level of `input_blocks` holds
    layers_per_block members and a Downsample, except the last; `output_blocks` one more member per level).
    The diffusers names depend on it, so it is read before any key is converted."""
    keys = list(keys)
    n_levels = sum(1 for k in keys if re.fullmatch(r"input_blocks\.\d+\.op\.weight", k)) + 1
    n_out = len({int(m.group(1)) for k in keys if (m := re.match(r"output_blocks\.(\d+)\.", k))})
    n = n_out // n_levels - 1
    if n < 1:
        raise KeyError("output_blocks")
    return n


def is_official_unet(state: Mapping[str, torch.Tensor]) -> bool:
    return "input_blocks.0.0.weight" in state and "out.2.weight" in state
