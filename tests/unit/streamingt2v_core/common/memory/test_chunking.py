"""Feed-forward in token chunks (streamingt2v_core.common.memory.chunking): the same denoiser output."""
import pytest
import torch

from streamingt2v_core.common import memory
from tests.support.memory_model import load_model, model_inputs


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def inputs(model):
    return model_inputs(model)


def test_feed_forward_chunking_same_output(model, inputs):
    sample, t, ehs, cond, _ = inputs
    ref = model.predict_noise(sample, t, ehs, cond)
    n = memory.set_feed_forward_chunking(model, 100)  # 100 divides no token count here
    try:
        from diffusers.models.attention import FeedForward

        rows = []
        hooks = [m.net[0].register_forward_hook(lambda _m, a, _o: rows.append(a[0].reshape(-1, a[0].shape[-1]).shape[0]))
                 for m in model.modules() if isinstance(m, FeedForward)]
        out = model.predict_noise(sample, t, ehs, cond)
        for h in hooks:
            h.remove()
        assert n > 0 and max(rows) <= 100 and min(rows) < 100
    finally:
        memory.set_feed_forward_chunking(model, None)
    # other row counts take other matmul kernels on some CPUs: float32 rounding, not a wrong chunk (which is O(1))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
