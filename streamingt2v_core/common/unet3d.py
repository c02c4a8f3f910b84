"""The diffusers `UNet3DConditionModel` (ModelScope text-to-video layout), shared by every family that
uses it: the StreamingT2V base UNet and CAM, the stage-1 ModelScope UNet and the refiners.

- `infer_unet3d_config`: the one place that reads a UNet3D architecture off tensor shapes.
- `build_diffusers_unet`: the diffusers model from such a config (extra keys ignored).
- `use_sdpa`, `spatial_cross_attentions`: attention plumbing for modules built from its blocks.
- `unet_encoder_forward`, `time_embedding`: the encoder half of the forward, for models that take the
  blocks but write their own forward (the StreamingT2V base UNet and CAM merge skips by attention).
"""
from __future__ import annotations

import re
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from .attention import SDPAProcessor

# The `UNet3DConditionModel` arguments a config may set; other keys (diffusers' `_class_name`, ...) are dropped.
_UNET_KEYS = ("in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
              "layers_per_block", "downsample_padding", "mid_block_scale_factor", "act_fn",
              "norm_num_groups", "norm_eps", "cross_attention_dim", "attention_head_dim", "sample_size")


def count_indices(shapes: Mapping[str, Sequence[int]], pattern: str) -> int:
    """How many distinct values the first group of `pattern` (a block index) takes over the keys."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in shapes for m in [rx.match(k)] if m})


def shape_dim(shapes: Mapping[str, Sequence[int]], key: str, ndim: int, index: int) -> int | None:
    """Size `index` of `key`'s shape when that shape has `ndim` dims, all positive; None otherwise (a
    missing, truncated, re-shaped or 1-element tensor). Shape inference then keeps its base value and
    the key check that follows names the key, instead of an IndexError naming nothing."""
    shape = shapes.get(key)
    if shape is None or len(shape) != ndim or any(int(d) < 1 for d in shape):
        return None
    return int(shape[index])


def infer_unet3d_config(shapes: Mapping[str, Sequence[int]], prefix: str = "", base: dict | None = None) -> dict:
    """`UNet3DConditionModel` arguments that the tensor shapes of a diffusers-layout UNet3D state dict
    determine, on top of `base` (returned as a new dict; what the shapes cannot tell, and what missing
    or odd-shaped keys leave open, keeps `base`'s value, so that the key check that follows can name
    those keys).

    `shapes` maps keys to shapes; the UNet's keys start with `prefix` (e.g. "base_model."). The head
    count cannot be read off shapes; `attention_head_dim` (diffusers' legacy name for it) comes from the
    initial temporal transformer, which has 8 heads of that size in ModelScope's design.
    """
    cfg = dict(base or {})
    s = {k[len(prefix):]: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}
    n_down = count_indices(s, r"down_blocks\.(\d+)\.")
    if n_down:
        chans = [shape_dim(s, f"down_blocks.{i}.resnets.0.conv2.weight", 4, 0) for i in range(n_down)]
        if None not in chans:
            cfg["block_out_channels"] = chans
        layers = count_indices(s, r"down_blocks\.0\.resnets\.(\d+)\.")
        if layers:
            cfg["layers_per_block"] = layers
        down_attn = [any(k.startswith(f"down_blocks.{i}.attentions.") for k in s) for i in range(n_down)]
        cfg["down_block_types"] = ["CrossAttnDownBlock3D" if a else "DownBlock3D" for a in down_attn]
        if any(k.startswith("up_blocks.") for k in s):
            up_attn = [any(k.startswith(f"up_blocks.{i}.attentions.") for k in s) for i in range(n_down)]
        else:  # no decoder keys: the mirror image of the encoder
            up_attn = down_attn[::-1]
        cfg["up_block_types"] = ["CrossAttnUpBlock3D" if a else "UpBlock3D" for a in up_attn]
    # conv_in / conv_out are Conv2d (4 dims), attn2.to_k and transformer_in.proj_in Linear (2 dims)
    c = shape_dim(s, "conv_in.weight", 4, 1)
    if c is not None:
        cfg["in_channels"] = c
    c = shape_dim(s, "conv_out.weight", 4, 0)
    if c is not None:
        cfg["out_channels"] = c
    ctx = next((k for k in sorted(s) if re.fullmatch(r"down_blocks\.\d+\.attentions\.0\.transformer_blocks\.0\."
                                                      r"attn2\.to_k\.weight", k)), None)
    c = shape_dim(s, ctx, 2, 1) if ctx is not None else None
    if c is not None:
        cfg["cross_attention_dim"] = c
    c = shape_dim(s, "transformer_in.proj_in.weight", 2, 0)
    if c is not None and c % 8 == 0:  # transformer_in has 8 heads of `attention_head_dim` channels
        cfg["attention_head_dim"] = c // 8
    return cfg


def build_diffusers_unet(unet_config: dict):
    """A diffusers `UNet3DConditionModel` from `unet_config` (keys it does not take are ignored)."""
    # imported here: reading a config off shapes (loaders, converters) should not pay for diffusers
    from diffusers.models.unets.unet_3d_condition import UNet3DConditionModel

    return UNet3DConditionModel(**{k: v for k, v in unet_config.items() if k in _UNET_KEYS})


def use_sdpa(module: nn.Module) -> None:
    """Every diffusers Attention below `module` runs on our SDPA processor."""
    proc = SDPAProcessor()
    for m in module.modules():
        if hasattr(m, "set_processor") and hasattr(m, "to_q"):
            m.set_processor(proc)


_SPATIAL_ATTN2 = re.compile(r"(.*\.)?attentions\.\d+\.transformer_blocks\.\d+\.attn2$")


def spatial_cross_attentions(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The attn2 of every spatial transformer (not the temporal ones) below `module`, in module order."""
    for name, m in module.named_modules():
        if _SPATIAL_ATTN2.match(name) and "temp_attentions" not in name:
            yield name, m


def unet_encoder_forward(enc: nn.Module, sample_bf: torch.Tensor, emb: torch.Tensor, context: torch.Tensor,
                         frames: int, after_transformer_in=None):
    """conv_in -> transformer_in -> down blocks -> mid block of a module holding those UNet3D parts.

    sample_bf: (B*F, C, H, W); emb: (B*F, T); context: (B, N, D) once per video (attention shares it).
    `after_transformer_in(x)`, if given, replaces the features after transformer_in (the CAM adds its
    conditioning there). Returns (mid output, skip features tuple).
    """
    x = enc.conv_in(sample_bf)
    x = enc.transformer_in(x, num_frames=frames, return_dict=False)[0]
    if after_transformer_in is not None:
        x = after_transformer_in(x)
    skips = (x,)
    for block in enc.down_blocks:
        if getattr(block, "has_cross_attention", False):
            x, res = block(hidden_states=x, temb=emb, encoder_hidden_states=context, num_frames=frames)
        else:
            x, res = block(hidden_states=x, temb=emb, num_frames=frames)
        skips += res
    x = enc.mid_block(x, emb, encoder_hidden_states=context, num_frames=frames)
    return x, skips


def time_embedding(enc: nn.Module, timestep: torch.Tensor, batch: int, frames: int, dtype) -> torch.Tensor:
    """The timestep embedding (one timestep, or one per video) repeated for each of the `frames` frames:
    (B*F, T), frames folded into the batch as the blocks expect."""
    t = timestep.reshape(-1).expand(batch) if timestep.numel() == 1 else timestep.reshape(batch)
    emb = enc.time_embedding(enc.time_proj(t).to(dtype))
    return emb.repeat_interleave(frames, dim=0)
