"""Feed-forward in token chunks: the same outputs with a smaller peak (the feed-forward is per token)."""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import nn


def _chunked_feed_forward(ff: nn.Module, chunk_tokens: int, hidden_states: torch.Tensor, *args, **kwargs):
    forward = type(ff).forward
    flat = hidden_states.reshape(-1, hidden_states.shape[-1])
    if flat.shape[0] <= chunk_tokens:
        return forward(ff, hidden_states, *args, **kwargs)
    out = torch.cat([forward(ff, flat[i:i + chunk_tokens], *args, **kwargs) for i in range(0, flat.shape[0], chunk_tokens)])
    return out.reshape(*hidden_states.shape[:-1], out.shape[-1])


def set_feed_forward_chunking(module: nn.Module, chunk_tokens: Optional[int]) -> int:
    """Every diffusers `FeedForward` below `module` runs on at most `chunk_tokens` token vectors at a time
    (None: all at once). The feed-forward is per token, so outputs are the same; its 4x-wide GEGLU hidden
    (8x with the gate) is the largest activation of the UNets at high resolution. Unlike diffusers'
    `enable_forward_chunking`, any token count works (no divisibility by the chunk size). Returns the count."""
    from diffusers.models.attention import FeedForward

    if chunk_tokens is not None and int(chunk_tokens) < 1:
        raise ValueError(f"feed-forward chunk_tokens must be at least 1, got {chunk_tokens}")
    count = 0
    for m in module.modules():
        if isinstance(m, FeedForward):
            m.__dict__.pop("forward", None)
            if chunk_tokens is not None:
                m.forward = functools.partial(_chunked_feed_forward, m, int(chunk_tokens))
            count += 1
    return count
