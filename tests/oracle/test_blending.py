"""Randomized blending against the official oracle: the recorded chunk x0s stitch into the recorded blended x0."""
import torch
from safetensors import safe_open

from streamingt2v_core.blending.cuts import stitch_x0
from tests.support.paths import REFINER_DATA as DATA


def test_stitch_reproduces_oracle_blended_x0():
    with safe_open(str(DATA / "oracle_slices.safetensors"), "pt") as f:
        for step in ("step00", "step12", "step13"):
            chunks = torch.cat([f.get_tensor(f"blend/{step}/chunk{k}/x0") for k in (0, 1)])
            offsets = f.get_tensor(f"blend/{step}/offsets")  # [0, r]
            out = stitch_x0(chunks, [0, 16], 24, 40, offsets[1:])
            torch.testing.assert_close(out, f.get_tensor(f"blend/{step}/x0_blended"), rtol=0, atol=0)
