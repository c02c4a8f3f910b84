"""The mergers that inject the CAM into the base UNet (paper: the CAM's cross-attention into the skips).

One merger per skip connection of the SVD UNet (12) and one for the middle block's output. Per video and
per pixel the F base frames attend over time to the K CAM frames: the skip is GroupNorm'd (32 groups over
C, F, h, w of each video), projected by `proj_in` and used as queries; the CAM features go in raw as keys
and values; heads of 64 channels, no q/k/v bias; `to_out.0`, then `proj_out`, added to the skip.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import MERGER_NAMES

HEAD_CHANNELS = 64
GROUPS = 32
NORM_EPS = 1e-6


class _Attention(nn.Module):
    """Multi-head cross-attention with diffusers' key names (to_q, to_k, to_v, to_out.0)."""

    def __init__(self, channels: int, heads: int, head_channels: int = HEAD_CHANNELS):
        super().__init__()
        inner = heads * head_channels
        self.heads = heads
        self.to_q = nn.Linear(channels, inner, bias=False)
        self.to_k = nn.Linear(channels, inner, bias=False)
        self.to_v = nn.Linear(channels, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, channels)])

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n, lq, _ = x.shape
        lk = context.shape[1]

        def split(t, length):
            return t.view(n, length, self.heads, -1).transpose(1, 2)

        q, k, v = split(self.to_q(x), lq), split(self.to_k(context), lk), split(self.to_v(context), lk)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out[0](out.transpose(1, 2).reshape(n, lq, -1))


class _TemporalTransformer(nn.Module):
    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.norm = nn.GroupNorm(GROUPS, channels, eps=NORM_EPS)
        self.proj_in = nn.Linear(channels, channels)
        self.attention = _Attention(channels, heads)
        self.proj_out = nn.Linear(channels, channels)


class SkipMerger(nn.Module):
    """merger(skip [B*F, C, h, w], cam [B*K, C, h, w]) -> skip + cross-attention(skip -> cam), [B*F, C, h, w]."""

    def __init__(self, channels: int, heads: int | None = None):
        super().__init__()
        self.channels = int(channels)
        self.temporal_transformer = _TemporalTransformer(self.channels, heads or max(1, self.channels // HEAD_CHANNELS))

    @staticmethod
    def shape_problems(shapes: Mapping[str, Sequence[int]], channels: int | None = None) -> list[tuple[str, list, list]]:
        """(key, expected, found) for every tensor that does not fit a merger of `channels` (default: the
        merger's own width, from its norm)."""
        norm = shapes.get("temporal_transformer.norm.weight")
        if channels is None:
            if norm is None or len(norm) != 1:
                return [("temporal_transformer.norm.weight", ["C"], list(norm or []))]
            channels = int(norm[0])
        with torch.device("meta"):
            own = {k: list(v.shape) for k, v in SkipMerger(channels).state_dict().items()}
        return [(k, own[k], list(shapes[k])) for k in sorted(own) if k in shapes and list(shapes[k]) != own[k]]

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], strict: bool = True) -> "SkipMerger":
        """The merger of the width `sd` holds (`temporal_transformer.*` keys), with its weights."""
        weight = sd["temporal_transformer.norm.weight"]
        with torch.device("meta"):
            module = cls(int(weight.shape[0]))
        module.load_state_dict(dict(sd), strict=strict, assign=True)
        return module.to(dtype=weight.dtype)

    def forward(self, skip: torch.Tensor, cam: torch.Tensor, frames: int, cond_frames: int) -> torch.Tensor:
        tt = self.temporal_transformer
        bf, c, h, w = skip.shape
        if bf % frames or cam.shape[0] % cond_frames or bf // frames != cam.shape[0] // cond_frames:
            raise ValueError(f"merger: skip rows {bf} and CAM rows {cam.shape[0]} are not the same number of "
                             f"videos of {frames} and {cond_frames} frames")
        b = bf // frames
        # GroupNorm's statistics span every frame of a video: normalise [B, C, F, h, w].
        x = tt.norm(skip.view(b, frames, c, h, w).transpose(1, 2))
        queries = x.permute(0, 3, 4, 2, 1).reshape(b * h * w, frames, c)  # per pixel, over time
        context = cam.view(b, cond_frames, c, h, w).permute(0, 3, 4, 1, 2).reshape(b * h * w, cond_frames, c)
        out = tt.proj_out(tt.attention(tt.proj_in(queries), context.to(queries.dtype)))
        out = out.view(b, h, w, frames, c).permute(0, 3, 4, 1, 2).reshape(bf, c, h, w)
        return skip + out


def load_mergers(sd: Mapping) -> dict:
    """{0..11, "mid"} -> SkipMerger. `sd` is either {name: state dict} (StreamingSVDParts.mergers) or one flat
    state dict with the file's `cross_attention_merger_*` names (the `model.diffusion_model.` prefix optional)."""
    if all(name in sd for name in MERGER_NAMES):
        parts = {name: sd[name] for name in MERGER_NAMES}
    else:
        parts = {}
        for name in MERGER_NAMES:
            stem = "cross_attention_merger_mid_block." if name == "mid" else f"cross_attention_merger_input_blocks.{name}."
            sub = {}
            for key, value in sd.items():
                at = key.find(stem)
                if at >= 0 and (at == 0 or key[:at].endswith(".")):
                    sub[key[at + len(stem):]] = value
            if not sub:
                raise KeyError(f"no weights for merger {name!r} ({stem}*) in the state dict")
            parts[name] = sub
    return {name: SkipMerger.from_state_dict(part) for name, part in parts.items()}
