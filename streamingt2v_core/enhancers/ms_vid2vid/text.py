"""The MS-Vid2Vid-XL text encoder: the OpenCLIP ViT-H-14 text tower used up to its penultimate layer, then
`ln_final` (reference/official_refiner.md §3), tokenized with CLIP's BPE (common/clip_bpe.py, the ids of
open_clip.tokenize)."""
from __future__ import annotations

import functools
import re
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ...common.clip_bpe import CLIPTokenizer
from ...common.state_dict import check_dtypes, check_shapes, module_dtypes
from ...common.weights import CheckpointError
from .files import SHAPE_FIX, SOURCES_FIX


class _TextBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)  # only its parameters (in_proj_*, out_proj) are used
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, D)
        n, length, d = x.shape
        q, k, v = F.linear(self.ln_1(x), self.attn.in_proj_weight, self.attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.view(n, length, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(n, length, d)
        x = x + self.attn.out_proj(a)
        return x + self.mlp(self.ln_2(x))


def _dims(state: Mapping[str, torch.Tensor], key: str, ndim: int, where) -> tuple[int, ...]:
    """The shape of `key`, which the architecture is read from: CheckpointError naming it when it is missing
    or not `ndim`-dimensional with positive sizes."""
    if key not in state:
        raise CheckpointError(f"{where}: no {key}, so not an OpenCLIP text tower; {SOURCES_FIX}")
    shape = tuple(state[key].shape)
    if len(shape) != ndim or min(shape, default=0) < 1:
        raise CheckpointError(f"{where}: {key} has shape {list(shape)}, expected {ndim} dims; {SHAPE_FIX}")
    return shape


@functools.lru_cache(maxsize=4)
def _tokenizer(context: int) -> CLIPTokenizer:
    return CLIPTokenizer(49408, context)  # the BPE file is read once per context length


class OpenCLIPTextEncoder(nn.Module):
    """OpenCLIP text tower as FrozenOpenCLIPEmbedder(layer='penultimate') runs it: blocks 0..L-2, then ln_final."""

    def __init__(self, vocab: int = 49408, context: int = 77, width: int = 1024, heads: int = 16, layers: int = 24):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.zeros(context, width))
        self.transformer = nn.Module()
        # the last block is never run: not built, not loaded
        self.transformer.resblocks = nn.ModuleList(_TextBlock(width, heads) for _ in range(layers - 1))
        self.ln_final = nn.LayerNorm(width)
        self.context_length = context

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], heads: int | None = None,
                        where="OpenCLIP text weights"):
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        blocks = {int(m.group(1)) for k in state if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))}
        if not blocks:
            raise CheckpointError(f"{where}: no transformer.resblocks.* keys, so not an OpenCLIP text tower; "
                                  f"{SOURCES_FIX}")
        vocab, width = _dims(state, "token_embedding.weight", 2, where)
        context = _dims(state, "positional_embedding", 2, where)[0]
        heads = heads or width // 64
        if heads < 1 or width % heads:
            raise CheckpointError(f"{where}: token_embedding.weight {list(state['token_embedding.weight'].shape)} "
                                  f"gives a width of {width}, which {heads} attention heads cannot split; "
                                  f"{SHAPE_FIX}")
        enc = cls(vocab, context, width, heads, 1 + max(blocks))
        own = enc.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise CheckpointError(f"{where}: the OpenCLIP text weights lack {missing[:5]} ({len(missing)} keys); "
                               f"{SOURCES_FIX}")
        check_shapes(enc, state, where, SHAPE_FIX)
        check_dtypes(state, module_dtypes(enc), where, SOURCES_FIX)
        enc.load_state_dict({k: state[k] for k in own})
        return enc.eval().requires_grad_(False)

    @staticmethod
    def tokenize(texts: list[str], context: int = 77) -> torch.Tensor:
        """open_clip.tokenize: lower-cased CLIP BPE, SOT ... EOT, zero padded (EOT kept when truncated)."""
        return _tokenizer(context)(list(texts))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids) + self.positional_embedding
        for block in self.transformer.resblocks:
            x = block(x)
        return self.ln_final(x)
