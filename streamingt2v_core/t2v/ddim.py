"""DDIM as stage 2 uses it: "leading" timesteps with an offset, eta = 1 by default (the full posterior
noise is injected, so sampling is stochastic), epsilon prediction, no clipping.

The variance noise is drawn as (B*F, C, H, W) from the caller's generator, because the official
pipeline folds frames into the batch before `scheduler.step`; drawing it in that shape and order is what
makes one seed reproduce the official video.

`DDIM` is a `common.sampler.Sampler`: `timesteps(steps)`, then `step(eps, t, x, steps, eta, generator)`.
"""
from __future__ import annotations

import torch


class DDIM:
    def __init__(self, num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon", clip_sample=False):
        if beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float32) ** 2
        elif beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
        else:
            raise ValueError(f"beta_schedule {beta_schedule!r} is not supported (scaled_linear, linear)")
        if prediction_type != "epsilon" or clip_sample:
            raise ValueError("stage 2 is an epsilon-prediction model sampled without clipping")
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.num_train_timesteps = num_train_timesteps
        self.steps_offset = steps_offset

    def timesteps(self, steps: int) -> torch.Tensor:
        """`steps` "leading" timesteps, descending: (steps-1, ..., 0) * (num_train_timesteps // steps) + offset."""
        if not 1 <= steps <= self.num_train_timesteps:
            raise ValueError(f"steps must be between 1 and {self.num_train_timesteps}, got {steps}")
        ratio = self.num_train_timesteps // steps
        return (torch.arange(steps - 1, -1, -1) * ratio + self.steps_offset).long()

    def step(self, eps: torch.Tensor, t: int, x: torch.Tensor, steps: int, eta: float = 1.0,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t -> x_{t-1} for video latents x (B, C, F, H, W), returned in float32."""
        t = int(t)
        x, eps = x.float(), eps.float()  # the update in float32 whatever the model's dtype
        prev = t - self.num_train_timesteps // steps
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        std = eta * variance.sqrt()
        out = a_prev.sqrt() * x0 + (1 - a_prev - std ** 2).sqrt() * eps
        if eta > 0:
            b, c, f, h, w = x.shape
            noise = torch.randn((b * f, c, h, w), generator=generator, dtype=torch.float32,
                                device=generator.device if generator is not None else "cpu")
            noise = noise.view(b, f, c, h, w).permute(0, 2, 1, 3, 4).to(x.device)
            out = out + std * noise
        return out
