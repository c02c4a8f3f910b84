"""t2v.ddim: timesteps and updates against diffusers' DDIMScheduler with the official config, the noise
drawn as (B*F, C, H, W), the refused configurations, and the Sampler protocol."""
import pytest
import torch
from diffusers import DDIMScheduler

from streamingt2v_core.common.sampler import Sampler
from streamingt2v_core.t2v.config import OFFICIAL_SCHEDULER
from streamingt2v_core.t2v.ddim import DDIM


def reference(steps):
    s = DDIMScheduler(**OFFICIAL_SCHEDULER, timestep_spacing="leading")
    s.set_timesteps(steps)
    return s


def test_leading_timesteps_with_offset():
    ddim = DDIM(**OFFICIAL_SCHEDULER)
    t = ddim.timesteps(50)
    assert t[0].item() == 981 and t[-1].item() == 1 and t.dtype == torch.long
    assert torch.equal(t, reference(50).timesteps)
    assert torch.equal(ddim.timesteps(4), torch.tensor([751, 501, 251, 1]))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_step_equals_diffusers(eta):
    steps = 4
    ddim, ref = DDIM(**OFFICIAL_SCHEDULER), reference(steps)
    b, c, f, h, w = 2, 4, 3, 5, 6
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(b, c, f, h, w, generator=g), torch.randn(b, c, f, h, w, generator=g)
    for t in ddim.timesteps(steps):  # the last one steps to the final alpha (alphas_cumprod[0])
        ours = ddim.step(eps, t, x, steps, eta=eta, generator=torch.Generator().manual_seed(int(t)))
        # our noise: drawn as (B*F, C, H, W), frames folded into the batch as the official pipeline does
        noise = torch.randn((b * f, c, h, w), generator=torch.Generator().manual_seed(int(t)))
        noise = noise.view(b, f, c, h, w).permute(0, 2, 1, 3, 4)
        theirs = ref.step(eps, t, x, eta=eta, variance_noise=noise if eta else None).prev_sample
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    if eta:
        plain = torch.randn(x.shape, generator=torch.Generator().manual_seed(int(t)))
        other = ref.step(eps, t, x, eta=eta, variance_noise=plain).prev_sample
        assert (ours - other).abs().max() > 1e-3  # the draw's shape and order matter


def test_float32_update_whatever_the_model_dtype():
    ddim = DDIM(**OFFICIAL_SCHEDULER)
    x = torch.randn(1, 4, 2, 3, 3).half()
    out = ddim.step(x, 501, x, 4, eta=0.0)
    assert out.dtype == torch.float32


def test_refused_configurations():
    with pytest.raises(ValueError, match="steps must be between 1 and 1000"):
        DDIM().timesteps(0)
    with pytest.raises(ValueError, match="beta_schedule"):
        DDIM(beta_schedule="squaredcos_cap_v2")
    with pytest.raises(ValueError, match="epsilon-prediction"):
        DDIM(prediction_type="v_prediction")
    with pytest.raises(ValueError, match="epsilon-prediction"):
        DDIM(clip_sample=True)


def test_ddim_is_a_sampler():
    assert isinstance(DDIM(), Sampler)

    class OnlySchedule:
        def timesteps(self, steps):
            return torch.arange(steps)

    assert not isinstance(OnlySchedule(), Sampler)
