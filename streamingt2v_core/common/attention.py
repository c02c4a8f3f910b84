"""Attention for the diffusers `Attention` modules of our UNet3Ds, on PyTorch SDPA.

- `SDPAProcessor`: the processor every such attention runs on (set by `common.unet3d.use_sdpa`).
- `sliced_sdpa`: SDPA over query slices, a memory option for kernels without fused attention.

Model-specific attention lives with its model: StreamingT2V's APM mixing in `t2v/apm.py` (it changes the
context before this processor sees it), the CAM mergers in `t2v/cam.py`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
            raise ValueError("SDPAProcessor: these UNet3D attention layers take no attention mask")
        rows, tokens, _ = hidden_states.shape
        q = attn.to_q(hidden_states)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
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
