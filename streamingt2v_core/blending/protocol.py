"""What randomized-blending SDEdit (blending.sdedit) needs from an enhancer, declared once.

`Enhancer` is the protocol each enhancer family implements (enhancers/ms_vid2vid, enhancers/diffusers_t2v);
blending never names a family: the family's own sampler runs inside `sample`, fed the blended x0.
`UNetEnhancer` implements the half every diffusers-UNet3D enhancer shares: guided x0 predictions of chunk
batches, the latent factor, a meta copy of the UNet for memory estimates, and the preview.
"""
from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import torch
from torch import nn

from ..common.guidance import cfg, rescale as rescale_to_cond
from .sdedit import preview

# x0_fn(model input, step index, t as a 1-element long tensor) -> the blended x0 of the whole video
X0Fn = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]


@runtime_checkable
class Enhancer(Protocol):
    family: str                   # log name of the model family
    canvas: tuple[int, int]       # (H, W) pixels the model refines at (official MS-Vid2Vid 720x1280)
    latent_scale: float           # autoencoder latent scale
    latent_factor: int            # pixels per latent pixel
    dtype: torch.dtype            # the denoiser's dtype
    vae: nn.Module | None         # diffusers AutoencoderKL, or None when loaded without one

    @property
    def device(self) -> torch.device: ...

    def check_latent_size(self, h: int, w: int) -> None:
        """ValueError naming the rule when the denoiser cannot run on h x w latents."""

    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """(context, negative_context), each (1, tokens, width)."""

    def first_timestep(self, steps: int, t_start: int) -> int:
        """The integer t the first of `steps` steps starting at or below t_start runs at (what to noise to)."""

    def alpha_sigma(self, t) -> tuple[float, float]:
        """VP (alpha, sigma) at integer timestep t."""

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, negative_context: torch.Tensor,
                   guidance: float = 7.5, rescale: float = 0.2, rows_together: bool = True) -> torch.Tensor:
        """Guided x0 of a batch of chunks x_t (B, C, F, h, w) as the model sees them; rows_together=False runs
        the guidance rows one denoiser call each (half the activations)."""

    def sample(self, noised: torch.Tensor, x0_fn: X0Fn, steps: int, t_start: int, seed: int = 0,
               brownian_noise=None) -> torch.Tensor:
        """The family's sampler from the VP-noised latent at t_start, every step fed x0_fn's blended x0;
        returns the final x0. seed / brownian_noise set the sampler's own noise where it has one."""

    def meta_unet(self) -> nn.Module:
        """The denoiser's architecture on the meta device in its dtype (activation estimates)."""

    def preview(self, x0: torch.Tensor) -> torch.Tensor | None:
        """IMAGE [H, W, 3] in [0, 1] on the CPU: the middle frame of the whole-video x0, decoded (None
        without an autoencoder)."""


def _guided(unet, x_t, t, context, negative_context, guidance, rescale, dtype, rows_together=True):
    """One denoiser call of a chunk batch: CFG as one batch of positive and negative rows (or, with
    `rows_together=False`, one call per row: half the activations), then rescale.

    Returns (y_out, u_out, out) in float32; out is the guided and rescaled prediction (official diff:70-83).
    """
    b = x_t.shape[0]
    ctx = context.expand(b, -1, -1) if context.shape[0] == 1 else context
    if guidance == 1.0:
        y = unet(x_t.to(dtype), t.expand(b).to(x_t.device), encoder_hidden_states=ctx.to(dtype), return_dict=False)[0].float()
        return y, y, y
    neg = negative_context.expand(b, -1, -1) if negative_context.shape[0] == 1 else negative_context
    if rows_together:
        both = unet(torch.cat([x_t, x_t]).to(dtype), t.expand(2 * b).to(x_t.device),
                    encoder_hidden_states=torch.cat([ctx, neg]).to(dtype), return_dict=False)[0].float()
        y_out, u_out = both[:b], both[b:]
    else:
        tt, x = t.expand(b).to(x_t.device), x_t.to(dtype)
        y_out = unet(x, tt, encoder_hidden_states=ctx.to(dtype), return_dict=False)[0].float()
        u_out = unet(x, tt, encoder_hidden_states=neg.to(dtype), return_dict=False)[0].float()
    return y_out, u_out, rescale_to_cond(cfg(y_out, u_out, guidance), y_out, rescale)


class UNetEnhancer(nn.Module):
    """The Enhancer half shared by diffusers-UNet3D enhancers (`self.unet`, `self.vae`, `self.dtype`); a
    family adds alpha_sigma, first_timestep, sample, encode_prompt, check_latent_size, canvas, latent_scale."""

    prediction_type = "v_prediction"

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def check_inputs(self, x_t, t, context, negative_context, guidance=7.5, rows_together=True) -> None:
        """ValueError naming the argument when a chunk batch, its timestep and its contexts do not fit the UNet
        or each other. Shapes only, besides one look at t's few values: free next to a UNet call."""
        cfg = self.unet.config
        c, width = cfg.in_channels, cfg.cross_attention_dim
        if not isinstance(x_t, torch.Tensor) or x_t.ndim != 5:
            shape = tuple(x_t.shape) if isinstance(x_t, torch.Tensor) else type(x_t).__name__
            raise ValueError(f"x_t must be a batch of chunk latents (B, {c}, F, h, w), got {shape}")
        if not x_t.is_floating_point():
            raise ValueError(f"x_t is {x_t.dtype}; expected float latents (B, {c}, F, h, w): convert it with .float()")
        b = x_t.shape[0]
        if x_t.shape[1] != c:
            raise ValueError(f"x_t has {x_t.shape[1]} channels (shape {tuple(x_t.shape)}); the UNet takes (B, {c}, F, "
                             "h, w): channels before frames")
        t = torch.as_tensor(t)
        if t.numel() < 1 or (t.numel() > 1 and not bool((t == t.reshape(-1)[0]).all())):
            raise ValueError(f"t is {t.reshape(-1).tolist()}; a chunk batch runs at one timestep (0-d, (1,), or the "
                             "same value for every row)")
        used = [("context", context)] + ([("negative_context", negative_context)] if guidance != 1.0 else [])
        for name, x in used:
            if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[2] != width:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"{name} is {shape}; the UNet reads text embeddings (1 or B, tokens, {width}): "
                                 "encode the prompt with this enhancer's encode_prompt")
            if x.shape[0] not in (1, b):
                raise ValueError(f"{name} has batch {x.shape[0]}, x_t has batch {b}: give one row per chunk, or 1 to "
                                 "share it")
        if guidance != 1.0 and rows_together and negative_context.shape[1] != context.shape[1]:
            raise ValueError(f"negative_context {tuple(negative_context.shape)} and context {tuple(context.shape)} "
                             "differ in token count, so their rows cannot run as one batch: encode both with one "
                             "encode_prompt call (or pass rows_together=False)")

    def denoise(self, x_t, t, context, negative_context, guidance=7.5, rescale=0.2, rows_together=True) -> dict:
        """Official `denoise` for a batch of chunks: y_out, u_out, the guided `out`, and x0 at the integer t."""
        self.check_inputs(x_t, t, context, negative_context, guidance, rows_together)
        t = torch.as_tensor(t).long().reshape(-1)[:1]
        y_out, u_out, out = _guided(self.unet, x_t, t, context.to(x_t.device), negative_context.to(x_t.device),
                                    guidance, rescale, self.dtype, rows_together)
        a, s = self.alpha_sigma(t)
        x = x_t.float()
        if self.prediction_type == "v_prediction":
            x0 = a * x - s * out
        elif self.prediction_type == "epsilon":
            x0 = (x - s * out) / a
        else:
            x0 = out
        return {"y_out": y_out, "u_out": u_out, "out": out, "x0": x0}

    @torch.no_grad()
    def predict_x0(self, x_t, t, context, negative_context, guidance=7.5, rescale=0.2, rows_together=True) -> torch.Tensor:
        """x0 of one chunk (or a batch of chunks): x_t (B, 4, F, h, w) as the UNet sees it, t an integer tensor.
        rows_together=False runs the guidance rows one UNet call each (half the activation memory)."""
        return self.denoise(x_t, t, context, negative_context, guidance, rescale, rows_together)["x0"]

    @property
    def latent_factor(self) -> int:
        """Pixels per latent pixel: 2 ** (autoencoder levels - 1), 8 for the SD autoencoders."""
        if self.vae is None:
            return 8
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def meta_unet(self):
        """The UNet's architecture on the meta device (no weights, no memory), in the UNet's dtype: what
        activation estimates run on (sdedit.chunk_activation_bytes)."""
        from diffusers import UNet3DConditionModel

        with torch.device("meta"):
            unet = UNet3DConditionModel.from_config(self.unet.config)
        return nn.Module.to(unet, self.dtype).eval().requires_grad_(False)  # diffusers' own .to() warns here

    def preview(self, x0: torch.Tensor) -> torch.Tensor | None:
        return preview(self, x0)
