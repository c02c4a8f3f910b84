"""Noise schedule and solver timesteps of the MS-Vid2Vid-XL refiner (SDEdit, v-prediction).

Follows the official `schedules_sdedit.py` / `diffusion_sdedit.py` (see reference/official_refiner.md §6-7):
a 1000-step `logsnr_cosine_interp` VP schedule rescaled to zero terminal SNR, a "trailing" timestep list
with one extra step whose penultimate sigma is dropped (31 -> 30 for the default 30 steps), VE sigmas
interpolated in log space, and integer timesteps obtained by rounding the continuous inverse.
All arithmetic is float32 torch, as in the official code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NUM_TRAIN_TIMESTEPS = 1000


def _logsnr_cosine(u: torch.Tensor, logsnr_min: float = -15.0, logsnr_max: float = 15.0) -> torch.Tensor:
    theta_min = math.atan(math.exp(-0.5 * logsnr_min))
    theta_max = math.atan(math.exp(-0.5 * logsnr_max))
    return -2 * torch.log(torch.tan(theta_min + u * (theta_max - theta_min)))


def _logsnr_cosine_shifted(u: torch.Tensor, scale: float) -> torch.Tensor:
    return _logsnr_cosine(u) + 2 * math.log(1.0 / scale)


def logsnr_cosine_interp_sigmas(n: int = NUM_TRAIN_TIMESTEPS, scale_min: float = 2.0, scale_max: float = 4.0,
                                zero_terminal_snr: bool = True) -> torch.Tensor:
    """VP sigmas (sqrt(1 - alpha_bar)) of the official schedule, index k = integer timestep."""
    u = torch.linspace(1, 0, n)
    logsnr = u * _logsnr_cosine_shifted(u, scale_min) + (1 - u) * _logsnr_cosine_shifted(u, scale_max)
    sigmas = torch.sigmoid(-logsnr).sqrt()
    if zero_terminal_snr and sigmas.max() != 1.0:
        # affine map in sigma space that keeps sigma_min and sends sigma_max to exactly 1
        smin, smax = sigmas.min(), sigmas.max()
        sigmas = smin + (1 - smin) / (smax - smin) * (sigmas - smin)
    return sigmas


@dataclass
class SolverPlan:
    """What one SDEdit run needs: VE sigmas (steps + 1, last 0) and the integer t of every step."""
    sigmas: torch.Tensor      # [steps + 1] float32, VE sigma per step, sigmas[-1] == 0
    timesteps: torch.Tensor   # [steps] int64, rounded t fed to the UNet and the alpha/sigma lookups


class VPSchedule:
    """The refiner's VP schedule with the official continuous-t <-> VE-sigma helpers."""

    def __init__(self, sigmas_vp: torch.Tensor | None = None):
        self.sigmas = logsnr_cosine_interp_sigmas() if sigmas_vp is None else sigmas_vp.float()
        self.alphas = torch.sqrt(1 - self.sigmas ** 2)
        ve = torch.sqrt(self.sigmas ** 2 / (1 - self.sigmas ** 2))  # last entry is inf (alpha = 0)
        self.log_sigmas_ve = ve.log()

    @property
    def num_timesteps(self) -> int:
        return self.sigmas.numel()

    def alpha_sigma(self, t: torch.Tensor):
        t = t.long().cpu()
        return self.alphas[t], self.sigmas[t]

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        lo, hi, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas_ve[lo] + w * self.log_sigmas_ve[hi]
        return log_sigma.exp()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.float().log()
        dists = log_sigma - self.log_sigmas_ve[:, None]
        lo_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.num_timesteps - 2)
        hi_idx = lo_idx + 1
        lo, hi = self.log_sigmas_ve[lo_idx], self.log_sigmas_ve[hi_idx]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        return ((1 - w) * lo_idx + w * hi_idx).view(sigma.shape)

    def trailing_plan(self, steps: int = 30, t_max: int = 599, t_min: int = 0,
                      discard_penultimate_step: bool = True) -> SolverPlan:
        """Official `trailing` discretisation for dpmpp_2m_sde: one extra step, penultimate sigma dropped."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if not 0 <= t_min < t_max < self.num_timesteps - 1:
            raise ValueError(f"t_max must be in [{t_min + 1}, {self.num_timesteps - 2}], got {t_max}")
        n = steps + 1 if discard_penultimate_step else steps
        ts = torch.arange(t_max, t_min - 1, -(t_max - t_min + 1) / n).clamp(t_min, t_max)
        sigmas = torch.cat([self.t_to_sigma(ts), ts.new_zeros([1])])
        if discard_penultimate_step:
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        timesteps = self.sigma_to_t(sigmas[:-1]).round().long()
        return SolverPlan(sigmas=sigmas, timesteps=timesteps)
