import numpy as np
import pytest
import torch

from streamingt2v_core.svd import config
from streamingt2v_core.svd.sigmas import official_sigmas


def independent(steps):
    logs = np.log(np.array(config.AYS_SIGMAS, dtype=np.float64)[::-1])
    return np.exp(np.interp(np.linspace(0, 1, steps), np.linspace(0, 1, len(logs)), logs))[::-1]


@pytest.mark.parametrize("steps", [2, 4, 10, 11, 25, 30, 50])
def test_official_sigmas_interpolate_the_anchors_then_append_zero(steps):
    sig = official_sigmas(steps)
    assert sig.dtype == torch.float64 and sig.shape == (steps + 1,)
    np.testing.assert_array_equal(sig.numpy()[:-1], independent(steps))
    assert sig[-1] == 0 and torch.all(sig[1:] < sig[:-1])


def test_thirty_steps_run_from_700_to_0_002():
    sig = official_sigmas(30)
    assert sig[0].item() == pytest.approx(700.0, rel=1e-15) and sig[-2].item() == pytest.approx(0.002, rel=1e-15)
    assert official_sigmas().shape == (31,)  # 30 steps by default, as the official sampler


def test_eleven_steps_are_the_anchors_and_differ_from_comfyui_node():
    np.testing.assert_allclose(official_sigmas(11).numpy()[:-1], config.AYS_SIGMAS, rtol=1e-12)
    # ComfyUI's node with 4 steps: [700, 11.26, 1.789, 0.264, 0] (interpolates to 5 points): not the official
    assert abs(official_sigmas(4)[1].item() - 6.4658) < 1e-4


def test_bad_steps():
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError):
            official_sigmas(bad)
