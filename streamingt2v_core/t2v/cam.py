"""CAM, the conditional attention module (short-term memory): a ControlNet-like copy of the UNet3D
encoder that reads the previous chunk's last frames (official key names under `unet.`).

It runs on the first 8 noisy latent frames of the chunk with text-only context; the conditioning
frames, as pixels in [-1, 1], pass through a small conv encoder whose output is added after
`transformer_in`. Its 12 skip features and the mid feature go to the base UNet's mergers unchanged
(the official "zero convs" on the outputs are identities).

`CAMMerger` is the other half of the CAM, inside the base UNet: the temporal cross-attention that injects
one CAM feature map into one skip connection (16 query frames attend to the 8 CAM frames at the same
pixel). `t2v/unet.py` builds one per skip connection and one for the mid block.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..common.unet3d import build_diffusers_unet, time_embedding, unet_encoder_forward, use_sdpa


class ConditioningFrameEncoder(nn.Module):
    """Pixels (N, 3, H, W) in [-1, 1] -> features (N, C0, H/8, W/8): conv + SiLU, then per level a conv
    and a stride-2 conv, each + SiLU, then conv_out (zero-initialised in the official model)."""

    def __init__(self, channels: list, out_channels: int, in_channels: int = 3):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        blocks = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            blocks.append(nn.Conv2d(c_in, c_in, 3, padding=1))
            blocks.append(nn.Conv2d(c_in, c_out, 3, padding=1, stride=2))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(channels[-1], out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(x))
        for conv in self.blocks:
            x = F.silu(conv(x))
        return self.conv_out(x)


class CAM(nn.Module):
    def __init__(self, unet_config: dict, cond_channels: list):
        super().__init__()
        ref = build_diffusers_unet(unet_config)
        for name in ("conv_in", "time_proj", "time_embedding", "transformer_in", "down_blocks", "mid_block"):
            setattr(self, name, getattr(ref, name))
        del ref
        self.controlnet_cond_embedding = ConditioningFrameEncoder(cond_channels, unet_config["block_out_channels"][0])
        use_sdpa(self)

    def encode_cond(self, cond_frames: torch.Tensor) -> torch.Tensor:
        """(B, Fc, 3, H, W) pixels in [-1, 1] -> (B*Fc, C0, h, w). Depends on the frames alone, not on the
        step or the guidance row: a chunk needs it once (extend.generate_chunk), not once per step and row."""
        b, fc = cond_frames.shape[:2]
        return self.controlnet_cond_embedding(cond_frames.reshape(b * fc, *cond_frames.shape[2:]).to(self.conv_in.weight.dtype))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, cond_frames: torch.Tensor,
                cond_embedding: torch.Tensor | None = None):
        """sample: (B, C, F, h, w) noisy latents (only the first Fc frames are read); text: (B, 77, D);
        cond_frames: (B, Fc, 3, H, W) pixels in [-1, 1], or `cond_embedding` = encode_cond(cond_frames) given
        instead (then cond_frames may be None). Returns (12 skip features, mid feature), each (B*Fc, C, h', w')."""
        cond = self.encode_cond(cond_frames) if cond_embedding is None else cond_embedding
        b = sample.shape[0]
        fc = cond.shape[0] // b
        x = sample[:, :, :fc]
        h, w = x.shape[-2:]
        x = x.permute(0, 2, 1, 3, 4).reshape(b * fc, -1, h, w)
        emb = time_embedding(self, timestep, b, fc, self.conv_in.weight.dtype)
        cond = cond.to(x.dtype)
        mid, skips = unet_encoder_forward(self, x, emb, text, fc, after_transformer_in=lambda s: s + cond)
        return skips, mid


class _MergerAttention(nn.Module):
    """Multi-head cross-attention, heads of 64 channels, no q/k/v bias (official key names)."""

    def __init__(self, channels: int, head_dim: int = 64):
        super().__init__()
        self.heads = max(channels // head_dim, 1)
        self.head_dim = head_dim
        inner = self.heads * head_dim
        self.to_q = nn.Linear(channels, inner, bias=False)
        self.to_k = nn.Linear(channels, inner, bias=False)
        self.to_v = nn.Linear(channels, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, channels), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n, lq, _ = x.shape
        h, d = self.heads, self.head_dim
        q = self.to_q(x).view(n, lq, h, d).transpose(1, 2)
        k = self.to_k(context).view(n, -1, h, d).transpose(1, 2)
        v = self.to_v(context).view(n, -1, h, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out[0](out.transpose(1, 2).reshape(n, lq, h * d))


class _TemporalCrossAttention(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(32, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, channels)
        self.attention = _MergerAttention(channels)
        self.proj_out = nn.Linear(channels, channels)
        # P_out starts at zero in the official model: a fresh merger changes nothing.
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)


class CAMMerger(nn.Module):
    """Injects CAM features into one skip connection of the base UNet.

    base: (B*F, C, H, W) features of the F (16) frames being generated; cam: (B*Fc, C, H, W) CAM
    features of the Fc (8) conditioning frames. Per pixel, the F frames (GroupNorm over C,F,H,W, then
    P_in) attend to the raw Fc CAM features; P_out of the result is added to the base features.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.temporal_transformer = _TemporalCrossAttention(channels)

    def forward(self, base: torch.Tensor, cam: torch.Tensor, batch: int) -> torch.Tensor:
        tt = self.temporal_transformer
        bf, c, h, w = base.shape
        frames, cam_frames = bf // batch, cam.shape[0] // batch
        x = base.view(batch, frames, c, h, w).permute(0, 2, 1, 3, 4)  # B C F H W
        x = tt.norm(x)
        q = x.permute(0, 3, 4, 2, 1).reshape(batch * h * w, frames, c)
        q = tt.proj_in(q)
        kv = cam.view(batch, cam_frames, c, h, w).permute(0, 3, 4, 1, 2).reshape(batch * h * w, cam_frames, c)
        out = tt.proj_out(tt.attention(q, kv))
        out = out.view(batch, h, w, frames, c).permute(0, 3, 4, 1, 2).reshape(bf, c, h, w)
        return base + out
