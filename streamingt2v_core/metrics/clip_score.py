"""CLIP score (StreamingT2V paper, Table 1): mean over frames of 100 * cos(text embedding, image embedding).
Any pair of encoders serves (see `clip_frame_scores`); `OpenCLIPScorer` builds them from an OpenCLIP model
file (ViT-H-14 by default), never downloading."""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..common.clip import CLIP_MEAN, CLIP_STD
from ..common.weights import read_weights

DEFAULT_CLIP_ARCH = "ViT-H-14"
_CLIP_FIX = (f"give a local OpenCLIP {DEFAULT_CLIP_ARCH} state dict (e.g. open_clip_pytorch_model.bin or a "
             ".safetensors file)")


def clip_frame_scores(frames: torch.Tensor, prompt: str, encode_images: Callable[[torch.Tensor], torch.Tensor],
                      encode_text: Callable[[str], torch.Tensor], batch_size: int = 16) -> np.ndarray:
    """Per frame 100 * cos(text, image). `frames` [T, H, W, 3] float 0..1; `encode_images` maps a
    batch [N, H, W, 3] in 0..1 to embeddings [N, D] (it does its own resize/crop/normalise);
    `encode_text` maps the prompt to [D] or [1, D]."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("CLIP score needs a non-empty `prompt`")
    text = encode_text(prompt).float().reshape(-1)
    text = text / text.norm()
    scores = []
    for start in range(0, frames.shape[0], batch_size):
        emb = encode_images(frames[start:start + batch_size]).float().to(text.device)
        if emb.ndim != 2 or emb.shape[1] != text.shape[0]:
            raise ValueError(f"image embeddings {tuple(emb.shape)} do not match the text embedding "
                             f"size {text.shape[0]}: the two encoders must come from one CLIP model")
        emb = emb / emb.norm(dim=-1, keepdim=True)
        scores.append((100.0 * emb @ text).double().cpu())
    return torch.cat(scores).numpy()


def _clip_pixels(frames: torch.Tensor, image_size: int, mean, std) -> torch.Tensor:
    """OpenCLIP's eval preprocessing on tensors: shortest side to image_size (bicubic, antialias),
    center crop, normalise. [N, H, W, 3] 0..1 -> [N, 3, S, S]."""
    x = frames.permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    if min(h, w) != image_size:
        scale = image_size / min(h, w)
        nh, nw = max(image_size, round(h * scale)), max(image_size, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        h, w = nh, nw
    top, left = (h - image_size) // 2, (w - image_size) // 2
    x = x[:, :, top:top + image_size, left:left + image_size].clamp(0, 1)
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


class OpenCLIPScorer:
    """Image and text encoders of an OpenCLIP model for `clip_frame_scores`."""

    def __init__(self, model, tokenizer, name: str, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.tokenizer = tokenizer
        self.name = name
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        cfg = getattr(model.visual, "preprocess_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", CLIP_MEAN))
        self.std = tuple(cfg.get("std", CLIP_STD))

    @classmethod
    def from_file(cls, weights: str | os.PathLike, arch: str = DEFAULT_CLIP_ARCH,
                  device: str | torch.device = "cpu") -> "OpenCLIPScorer":
        """`arch` is an OpenCLIP model name (ViT-H-14) or a path to a model config JSON (registered
        under its file stem); `weights` a state dict file (.safetensors, or .bin/.pt/.pth read safely:
        common.weights.read_weights)."""
        import open_clip

        if not os.path.isfile(weights):
            raise FileNotFoundError(f"CLIP weights file not found: {weights}. Give a local OpenCLIP "
                                    f"{DEFAULT_CLIP_ARCH} state dict (e.g. open_clip_pytorch_model.bin)")
        if arch.endswith(".json"):
            if not os.path.isfile(arch):
                raise FileNotFoundError(f"CLIP model config not found: {arch}")
            open_clip.add_model_config(arch)
            arch = os.path.splitext(os.path.basename(arch))[0]
        model = open_clip.create_model(arch, pretrained=None, device="cpu")
        state = read_weights(weights, _CLIP_FIX)
        if state and all(k.startswith("module.") for k in state):
            state = {k[len("module."):]: v for k, v in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"CLIP weights {weights} do not fit OpenCLIP {arch}: missing "
                             f"{sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}")
        return cls(model, open_clip.get_tokenizer(arch), f"open_clip:{arch}", device)

    @torch.no_grad()
    def encode_images(self, frames: torch.Tensor) -> torch.Tensor:
        pixels = _clip_pixels(frames, self.image_size, self.mean, self.std).to(self.device)
        return self.model.encode_image(pixels)

    @torch.no_grad()
    def encode_text(self, prompt: str) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer([prompt]).to(self.device))[0]
