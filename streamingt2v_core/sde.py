"""DPM-Solver++(2M) SDE over the whole-video latent, with a Brownian-tree noise (official `solvers_sdedit.py`).

The solver state lives in VE space (x = x0 + sigma * eps); the model sees x * c_in with c_in = 1/sqrt(sigma^2 + 1).
Every chunk of a step shares the state and the noise: only the x0 predictions are blended per chunk.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch


class BrownianNoise:
    """Normalised Brownian increments -W(s_next, s)/sqrt(s - s_next) of one tree over the whole latent.

    Equals the official `BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed)` query for a step s -> s_next.
    The tree has the latent's shape, dtype and device, so the noise of a frame depends on the whole shape.
    """

    def __init__(self, x: torch.Tensor, sigma_min: float, sigma_max: float, seed: int = 0):
        import torchsde  # a ComfyUI requirement; imported here so the core imports without it

        self.tree = torchsde.BrownianTree(t0=float(sigma_min), w0=torch.zeros_like(x), t1=float(sigma_max),
                                          entropy=int(seed))

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        s, s_next = float(sigma), float(sigma_next)
        with warnings.catch_warnings():
            # torchsde warns when a query hits t1 up to float32 rounding; the value is still the exact one
            warnings.filterwarnings("ignore", message="Should have", category=UserWarning)
            w = self.tree(s_next, s)  # the official sampler sorts (s, s_next) ascending and flips the sign
        return -w / abs(s - s_next) ** 0.5


def dpmpp_2m_sde(x: torch.Tensor, denoise: Callable[[torch.Tensor, int], torch.Tensor], sigmas: torch.Tensor,
                 noise: Callable[[int], torch.Tensor], callback: Callable[[int, torch.Tensor], None] | None = None,
                 eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    """Run the solver from the VE state `x` at sigmas[0].

    denoise(x_in, i) gets the scaled model input x * c_in and returns the (blended) x0 prediction;
    noise(i) returns the normalised increment for step i -> i + 1 (i < steps - 1).
    The last step (sigma_next = 0) returns the x0 prediction itself, as the official solver does.
    """
    old_denoised, h_last = None, None
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        c_in = 1.0 / (sigma ** 2 + 1.0) ** 0.5
        denoised = denoise(x * c_in, i)
        if callback is not None:
            callback(i, denoised)
        if float(sigma_next) == 0.0:
            x = denoised
            break
        t, s = -sigma.log(), -sigma_next.log()
        h = s - t
        eta_h = eta * h
        x = sigma_next / sigma * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
        if old_denoised is not None:
            r = h_last / h
            x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
        if eta:
            x = x + noise(i) * sigma_next * (-2 * eta_h).expm1().neg().sqrt() * s_noise
        old_denoised, h_last = denoised, h
    return x


def recorded_noise(increments: Sequence[torch.Tensor] | torch.Tensor, like: torch.Tensor) -> Callable[[int], torch.Tensor]:
    """Noise source that replays recorded normalised increments (e.g. the oracle's stepNN/bt_noise)."""

    def get(i: int) -> torch.Tensor:
        if i >= len(increments):
            raise ValueError(f"brownian_noise has {len(increments)} increments; step {i} needs one more "
                             f"(pass steps - 1 increments)")
        inc = increments[i]
        if inc.shape != like.shape:
            raise ValueError(f"brownian_noise[{i}] has shape {tuple(inc.shape)}, the latent is {tuple(like.shape)}")
        return inc.to(device=like.device, dtype=like.dtype)

    return get
