"""The CAM's control-frame encoder (paper: the conditional attention module's frame encoder).

The CAM of StreamingSVD is a copy of the SVD UNet's input path (run by ComfyUI's own UNetModel, see the
bridge); what it adds is this small encoder: the 7 control frames as pixels in [-1, 1] go through
conv_in + SiLU, then per stage a stride-1 and a stride-2 3x3 conv, each followed by a LayerNorm over the
channels and SiLU, and conv_out to 320 channels at 1/8 of the resolution; the result is added to the
output of the CAM's first input block.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import CAM_CHANNELS

LAYER_NORM_EPS = 1e-5  # torch's default, which the official LayerNorms keep


class _ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an N C H W map (the official permutes to channels-last for it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class CAMFrameEncoder(nn.Module):
    """Control frames [N, 3, H, W] in [-1, 1] -> [N, out_channels, H/2^s, W/2^s] (s = stages; 3 officially).

    `channels`: the stage widths (official 32, 96, 256, 512; the oracle's tiny model 8, 16, 24, 32). Keys:
    `conv_in`, `blocks.0..2s-1` (even: stride 1, odd: stride 2 to the next width), `norms.0..2s-1`, `conv_out`."""

    def __init__(self, channels: Sequence[int] = (32, 96, 256, 512), out_channels: int = CAM_CHANNELS,
                 in_channels: int = 3, eps: float = LAYER_NORM_EPS):
        super().__init__()
        channels = [int(c) for c in channels]
        if len(channels) < 1:
            raise ValueError("CAMFrameEncoder needs at least one stage width")
        self.channels = channels
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        self.norms = nn.ModuleList()
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            self.blocks.append(nn.Conv2d(c_in, c_in, 3, padding=1))
            self.norms.append(_ChannelLayerNorm(c_in, eps=eps))
            self.blocks.append(nn.Conv2d(c_in, c_out, 3, padding=1, stride=2))
            self.norms.append(_ChannelLayerNorm(c_out, eps=eps))
        self.conv_out = nn.Conv2d(channels[-1], out_channels, 3, padding=1)

    @staticmethod
    def channels_of(shapes: Mapping[str, Sequence[int]]) -> tuple[list[int], int, int]:
        """(stage widths, out channels, in channels) read off a state dict's shapes (encoder key names)."""
        widths = [int(shapes["conv_in.weight"][0])]
        i = 1
        while f"blocks.{i}.weight" in shapes:
            widths.append(int(shapes[f"blocks.{i}.weight"][0]))
            i += 2
        return widths, int(shapes["conv_out.weight"][0]), int(shapes["conv_in.weight"][1])

    @classmethod
    def shape_problems(cls, shapes: Mapping[str, Sequence[int]]) -> list[tuple[str, list, list]]:
        """(key, expected, found) for every tensor that does not fit the encoder its shapes describe."""
        required = ("conv_in.weight", "conv_out.weight")
        if not all(k in shapes and len(shapes[k]) == 4 for k in required):
            return [(k, ["4-d conv weight"], list(shapes.get(k, ()))) for k in required
                    if not (k in shapes and len(shapes[k]) == 4)]
        if any(f"blocks.{i}.weight" in shapes and len(shapes[f"blocks.{i}.weight"]) < 1 for i in range(1, 64, 2)):
            return [("blocks", ["conv weights"], ["scalars"])]
        widths, out, c_in = cls.channels_of(shapes)
        with torch.device("meta"):
            own = {k: list(v.shape) for k, v in cls(widths, out, c_in).state_dict().items()}
        rows = [(k, own[k], list(shapes[k])) for k in sorted(own) if k in shapes and list(shapes[k]) != own[k]]
        if out != CAM_CHANNELS:
            rows.append(("conv_out.weight", [CAM_CHANNELS, *own["conv_out.weight"][1:]], list(shapes["conv_out.weight"])))
        return rows

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], strict: bool = True) -> "CAMFrameEncoder":
        """The encoder whose widths the state dict's shapes give, with its weights (dtype and device of `sd`)."""
        widths, out, c_in = cls.channels_of({k: v.shape for k, v in sd.items()})
        any_tensor = next(iter(sd.values()))
        with torch.device("meta"):
            module = cls(widths, out, c_in)
        module.load_state_dict(dict(sd), strict=strict, assign=True)
        return module.to(dtype=any_tensor.dtype)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(frames))
        for conv, norm in zip(self.blocks, self.norms):
            x = F.silu(norm(conv(x)))
        return self.conv_out(x)
