"""Text side of stage 2: the CLIP text encoder (ModelScope's, 23 layers, 1024 wide, stored under
`text_encoder.` in the official checkpoint) and its tokenizer (common/clip_bpe.py, offline CLIP BPE).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel


class CLIPTextEncoder(nn.Module):
    """transformers' CLIP text transformer under the official key names (`text_model.`), whichever way
    the installed transformers nests it."""

    def __init__(self, text_config: dict):
        super().__init__()
        cfg = CLIPTextConfig(**text_config)
        cfg._attn_implementation = "sdpa"
        model = CLIPTextModel(cfg)
        self.text_model = getattr(model, "text_model", model)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_model(input_ids=input_ids).last_hidden_state
