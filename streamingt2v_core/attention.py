"""Attention pieces StreamingT2V adds to the ModelScope UNet3D.

- `SDPAProcessor`: the attention of every diffusers `Attention` in our UNets, on PyTorch SDPA. In the
  16 spatial cross-attention layers of the base UNet it also does the APM mixing: the 93 context tokens
  (77 text + 16 APM image tokens) become 77 by `text + SiLU(alpha) * LayerNorm(Conv1d_93->77(context))`
  before keys and values (what the official xformers processor computes; the paper's description
  differs).
- `CAMMerger`: the temporal cross-attention that injects one CAM feature map into one skip connection
  of the base UNet (16 query frames attend to the 8 CAM frames at the same pixel).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def add_apm_mixing(attn: nn.Module, num_tokens: int, text_tokens: int, context_dim: int) -> None:
    """Adds the APM parameters (official key names `conv`, `conv_ln`, `alpha`) to a cross-attention."""
    attn.conv = nn.Conv1d(num_tokens, text_tokens, kernel_size=3, padding="same")
    attn.conv_ln = nn.LayerNorm(context_dim)
    # The official init is 0: SiLU(0) = 0 switches the APM off until trained.
    attn.alpha = nn.Parameter(torch.zeros(()))


def apm_mix(attn: nn.Module, context: torch.Tensor) -> torch.Tensor:
    text_tokens = attn.conv.out_channels
    mixed = attn.conv_ln(attn.conv(context))
    return context[:, :text_tokens] + F.silu(attn.alpha) * mixed


def sliced_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale=None, slice_size=None) -> torch.Tensor:
    """SDPA over at most `slice_size` queries at a time (exact: softmax is per query); bounds the score
    matrix of kernels without fused attention to rows x heads x slice_size x keys."""
    n = q.shape[-2]
    if not slice_size or n <= slice_size:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    for i in range(0, n, slice_size):
        out[..., i:i + slice_size, :] = F.scaled_dot_product_attention(q[..., i:i + slice_size, :], k, v, scale=scale)
    return out


class SDPAProcessor:
    """Scaled-dot-product attention for diffusers `Attention` modules (no masks, no norms: the UNet3D's
    attentions use none).

    The context may come once per video (B rows) instead of once per frame (B*F rows): keys and values
    are then computed once and shared by the frames, which is what the per-frame repetition in the
    official forward amounts to, at a fraction of the cost.

    `slice_size`: queries per SDPA call (None: all), a memory option for kernels without fused attention.
    """

    def __init__(self, slice_size: int | None = None):
        self.slice_size = slice_size

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        if attention_mask is not None:
            raise ValueError("StreamingT2V attention layers take no attention mask")
        rows, tokens, _ = hidden_states.shape
        q = attn.to_q(hidden_states)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if hasattr(attn, "alpha") and encoder_hidden_states is not None:
            context = apm_mix(attn, context)
        k = attn.to_k(context)
        v = attn.to_v(context)
        heads = attn.heads
        dim = q.shape[-1] // heads
        q = q.view(rows, tokens, heads, dim).transpose(1, 2)
        k = k.view(k.shape[0], -1, heads, dim).transpose(1, 2)
        v = v.view(v.shape[0], -1, heads, dim).transpose(1, 2)
        if k.shape[0] != rows:  # one context per video, shared by its frames
            frames = rows // k.shape[0]
            k = k.repeat_interleave(frames, dim=0)
            v = v.repeat_interleave(frames, dim=0)
        out = sliced_sdpa(q, k, v, attn.scale, self.slice_size)
        out = out.transpose(1, 2).reshape(rows, tokens, heads * dim)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


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
