"""StreamingSVD nodes (nodes/svd.py), in-process with ComfyUI importable."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.support.paths import ROOT

from tests.support.comfy_inproc import import_pack


DATA = ROOT / "tests" / "data" / "svd"
pytestmark = pytest.mark.svd_oracle  # compares with the official recording


@pytest.fixture(scope="module")
def svd_nodes():
    return import_pack("nodes.svd")


def test_sigmas_node_gives_the_official_schedule_not_cores_ays(svd_nodes):
    node = svd_nodes.StreamingSVDSigmas
    schema = node.define_schema()
    assert schema.node_id == "StreamingSVDSigmas" and [i.id for i in schema.inputs] == ["steps"]
    sigmas = node.execute(4).result[0]
    assert sigmas.dtype == torch.float32 and sigmas.shape == (5,)
    # the schedule the official code recorded for 4 steps, as the float32 its sampler steps through
    recorded = load_file(str(DATA / "ref_long.safetensors"))["chunk1/sigmas"]
    assert torch.equal(sigmas, recorded.float())
    # core's AlignYourStepsScheduler(SVD, 4) makes another schedule from the same anchors
    from comfy_extras import nodes_align_your_steps as ays

    core = ays.loglinear_interp(ays.NOISE_LEVELS["SVD"], 5)
    assert abs(float(core[1]) - float(sigmas[1])) > 1.0
    assert node.execute(30).result[0].shape == (31,)
