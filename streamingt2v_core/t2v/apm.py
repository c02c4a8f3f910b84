"""APM, the appearance preservation module (long-term memory): the anchor frame's OpenCLIP image
embedding becomes 16 context tokens (official key names `image_encoder.model.` and `resampler.`).

The image encoder is open_clip's CLIP with its text transformer removed (the official code deletes it;
the other text-side tensors stay in the checkpoint and are kept, unused). Only the pooled, projected
embedding is used.

The tokens reach the base UNet through its 16 spatial cross-attentions, which `add_apm_mixing` gives the
APM parameters and a forward pre-hook: the 93 context tokens (77 text + 16 APM image tokens) become 77
by `text + SiLU(alpha) * LayerNorm(Conv1d_93->77(context))` before keys and values (what the official
xformers processor computes; the paper's description differs). A hook on the layer rather than an
attention processor, so that any processor (plain, sliced, another kernel) attends to the mixed context
and swapping processors cannot drop the APM.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..common.clip import CLIP_MEAN, CLIP_STD


class OpenCLIPImageEncoder(nn.Module):
    def __init__(self, clip_config: dict):
        super().__init__()
        from open_clip.model import CLIP

        cfg = copy.deepcopy(clip_config)
        text_cfg = dict(cfg["text_cfg"])
        text_cfg["layers"] = 1  # the text transformer is deleted below: build the smallest one
        self.model = CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=text_cfg)
        del self.model.transformer
        self.image_size = cfg["vision_cfg"]["image_size"]
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> CLIP input: bicubic (align_corners) resize of the whole frame, no
        crop, with the Gaussian pre-blur the official (kornia) resize applies when shrinking."""
        size = (self.image_size, self.image_size)
        x = _antialias_blur(image, image.shape[-2] / size[0], image.shape[-1] / size[1])
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=True)
        x = (x + 1.0) / 2.0
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.visual(self.preprocess(image))


def _gaussian_kernel(size: int, sigma: float, dtype, device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    k = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return (k / k.sum()).to(dtype=dtype, device=device)


def _antialias_blur(x: torch.Tensor, fy: float, fx: float) -> torch.Tensor:
    """Separable Gaussian blur with sigma = (factor - 1) / 2 (at least 0.001) and an odd kernel of at
    least 3, reflect padding: the anti-aliasing of the resize the official preprocessing uses. For the
    256 -> 224 resize of the official pipeline it is the identity to float precision."""
    out = x
    for dim, factor in ((-2, fy), (-1, fx)):
        sigma = max((factor - 1.0) / 2.0, 0.001)
        size = max(int(2.0 * 2 * sigma), 3)
        size += 1 - size % 2
        if factor <= 1.0:  # enlarging: sigma 0.001, the kernel is exactly the identity
            continue
        k = _gaussian_kernel(size, sigma, x.dtype, x.device)
        pad = size // 2
        c = out.shape[1]
        if dim == -2:
            out = F.conv2d(F.pad(out, (0, 0, pad, pad), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
        else:
            out = F.conv2d(F.pad(out, (pad, pad, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return out


class APMResampler(nn.Module):
    """Image embedding (B, F, D) -> mean over frames -> MLP D -> 1280 -> SiLU -> n*D -> (B, n, D)."""

    def __init__(self, dim: int = 1024, hidden: int = 1280, num_tokens: int = 16):
        super().__init__()
        self.num_tokens, self.dim = num_tokens, dim
        self.context_embedding = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, num_tokens * dim))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        if embedding.dim() == 2:
            embedding = embedding[:, None]
        x = self.context_embedding(embedding.mean(dim=1))
        return x.view(-1, self.num_tokens, self.dim)


def add_apm_mixing(attn: nn.Module, num_tokens: int, text_tokens: int, context_dim: int) -> None:
    """Makes a cross-attention read the APM tokens: adds the APM parameters (official key names `conv`,
    `conv_ln`, `alpha`) and the pre-hook that mixes its context with them (`apm_mix`) on every call."""
    attn.conv = nn.Conv1d(num_tokens, text_tokens, kernel_size=3, padding="same")
    attn.conv_ln = nn.LayerNorm(context_dim)
    # The official init is 0: SiLU(0) = 0 switches the APM off until trained.
    attn.alpha = nn.Parameter(torch.zeros(()))
    attn.register_forward_pre_hook(_mix_context, with_kwargs=True)


def apm_mix(attn: nn.Module, context: torch.Tensor) -> torch.Tensor:
    """Context (N, 77 + 16, D) -> (N, 77, D): the text tokens plus SiLU(alpha) times the mixed tokens."""
    text_tokens = attn.conv.out_channels
    mixed = attn.conv_ln(attn.conv(context))
    return context[:, :text_tokens] + F.silu(attn.alpha) * mixed


def _mix_context(attn: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook of diffusers `Attention.forward(hidden_states, encoder_hidden_states=None, ...)`:
    replaces the context by its APM mix (self-attention calls, without a context, pass unchanged)."""
    if kwargs.get("encoder_hidden_states") is not None:
        kwargs["encoder_hidden_states"] = apm_mix(attn, kwargs["encoder_hidden_states"])
    elif len(args) > 1 and args[1] is not None:
        args = (args[0], apm_mix(attn, args[1]), *args[2:])
    else:
        return None
    return args, kwargs
