"""DPM-Solver++(2M) SDE over the whole-video latent, with a Brownian-tree noise (official `solvers_sdedit.py`).

The solver state lives in VE space (x = x0 + sigma * eps); the model sees x * c_in with c_in = 1/sqrt(sigma^2 + 1).
Every chunk of a step shares the state and the noise: only the x0 predictions are blended per chunk.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch

from .schedule import VPSchedule


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


class DPMSolverSDE:
    """DPM-Solver++(2M) SDE on the refiner's trailing plan from `t_start`, as a sampler (common.sampler's
    protocol): `timesteps(steps)` plans a run, `start(noised)` makes the VE state and its noise, then per
    step the model sees `model_input(x)` and `step(x0, t, x)` advances the state with the (blended) x0.

    Steps are taken in order: like diffusers' schedulers, the solver counts them itself; `t` is the step's
    integer timestep. The last step (sigma_next = 0) returns the x0 prediction itself, as officially.
    """

    def __init__(self, schedule: VPSchedule, t_start: int = 599, eta: float = 1.0, s_noise: float = 1.0):
        self.schedule, self.t_start, self.eta, self.s_noise = schedule, int(t_start), eta, s_noise
        self.sigmas = self.noise = None

    def timesteps(self, steps: int) -> torch.Tensor:
        plan = self.schedule.trailing_plan(steps, t_max=self.t_start)
        self.sigmas = plan.sigmas
        self.noise, self._i, self._old_x0, self._h_last = None, 0, None, None
        return plan.timesteps

    def start(self, noised: torch.Tensor, seed: int = 0, brownian_noise=None) -> torch.Tensor:
        """The VE state of the VP-noised latent, and the noise source: `brownian_noise` (steps - 1 recorded
        increments) when given, else the Brownian tree of entropy `seed` (0 is the official tree)."""
        sigmas = self.sigmas
        x = noised.float() * sigmas[0]  # official quirk: VP-noised latent times sigma_VE(t_start) (§8)
        if brownian_noise is not None:
            self.noise = recorded_noise(brownian_noise, x)
        elif len(sigmas) > 2:
            tree = BrownianNoise(x, sigmas[sigmas > 0].min(), sigmas.max(), seed)
            self.noise = lambda i: tree(sigmas[i], sigmas[i + 1])  # noqa: E731
        return x

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        c_in = 1.0 / (self.sigmas[self._i] ** 2 + 1.0) ** 0.5
        return x * c_in

    def step(self, x0: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
        i = self._i
        self._i += 1
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        if float(sigma_next) == 0.0:
            return x0
        eta = self.eta
        t_, s = -sigma.log(), -sigma_next.log()
        h = s - t_
        eta_h = eta * h
        x = sigma_next / sigma * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * x0
        if self._old_x0 is not None:
            r = self._h_last / h
            x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (x0 - self._old_x0)
        if eta:
            x = x + self.noise(i) * sigma_next * (-2 * eta_h).expm1().neg().sqrt() * self.s_noise
        self._old_x0, self._h_last = x0, h
        return x


def sdedit_solve(schedule: VPSchedule, noised: torch.Tensor,
                 x0_fn: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor], steps: int, t_start: int,
                 seed: int = 0, brownian_noise=None) -> torch.Tensor:
    """SDEdit from the VP-noised latent at t_start: x0_fn(model input, step, t as a 1-element long tensor)
    gives the (blended) x0 of each step; returns the final x0."""
    solver = DPMSolverSDE(schedule, t_start)
    timesteps = solver.timesteps(steps)
    x = solver.start(noised, seed, brownian_noise)
    for i in range(len(timesteps)):
        x = solver.step(x0_fn(solver.model_input(x), i, timesteps[i:i + 1]), timesteps[i], x)
    return x
