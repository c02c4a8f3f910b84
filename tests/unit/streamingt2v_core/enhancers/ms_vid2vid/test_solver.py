"""The DPM-Solver++(2M) SDE as a sampler (common.sampler): one update per timestep of the trailing plan."""
import torch

from streamingt2v_core.common.sampler import Sampler
from streamingt2v_core.enhancers.ms_vid2vid.schedule import VPSchedule
from streamingt2v_core.enhancers.ms_vid2vid.solver import DPMSolverSDE, sdedit_solve


def test_solver_is_a_sampler_and_runs_the_trailing_plan():
    schedule = VPSchedule()
    solver = DPMSolverSDE(schedule, t_start=599)
    assert isinstance(solver, Sampler)
    timesteps = solver.timesteps(4)
    assert torch.equal(timesteps, schedule.trailing_plan(4, t_max=599).timesteps)
    noised = torch.randn(1, 4, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    seen = []

    def x0_fn(x_in, i, t):
        seen.append((i, int(t)))
        return x_in * 0.5

    out = sdedit_solve(schedule, noised, x0_fn, 4, 599, seed=1)
    assert seen == [(i, int(t)) for i, t in enumerate(timesteps)]
    assert out.shape == noised.shape and torch.isfinite(out).all()
    torch.testing.assert_close(sdedit_solve(schedule, noised, x0_fn, 4, 599, seed=1), out, rtol=0, atol=0)
