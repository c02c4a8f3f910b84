"""The VideoQualityMetrics node (nodes/metrics.py) with stand-ins for ComfyUI's CLIP and CLIP_VISION."""
from __future__ import annotations

import json
import math
import sys
import types

import pytest
import torch

from streamingt2v_core import metrics as M
from tests.support.metrics_videos import panning, smooth_texture
from tests.support.paths import ROOT


@pytest.fixture(scope="module")
def metrics_node():
    """nodes/metrics.py imported as part of a bare stand-in package (the pack's own __init__ needs a
    running ComfyUI's folder setup; the node's relative import of the core needs a parent package)."""
    comfy_root = ROOT / ".comfyui"
    if not (comfy_root / "comfy_api").is_dir():
        pytest.skip("ComfyUI is not installed at .comfyui (tools/bootstrap.sh)")
    sys.path.insert(0, str(comfy_root))
    import comfy.cli_args

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True  # what `main.py --cpu` sets; model_management reads it on import
    pack = types.ModuleType("st2v_metrics_pack")
    pack.__path__ = [str(ROOT)]
    sub = types.ModuleType("st2v_metrics_pack.nodes")
    sub.__path__ = [str(ROOT / "nodes")]
    sys.modules.setdefault("st2v_metrics_pack", pack)
    sys.modules.setdefault("st2v_metrics_pack.nodes", sub)
    import importlib

    return importlib.import_module("st2v_metrics_pack.nodes.metrics")


class FakeClipVision:
    """Stands in for ComfyUI's CLIP_VISION: embedding = (mean RGB, 1 - mean RGB), cut to `dim`."""

    def __init__(self, dim: int = 6):
        self.dim = dim

    def encode_image(self, image):
        m = image.mean(dim=(1, 2))
        return {"image_embeds": torch.cat([m, 1 - m], dim=1)[:, :self.dim]}


class FakeClip:
    def tokenize(self, text):
        return {"l": [[(1, 1.0)]], "text": text}

    def encode_from_tokens(self, tokens, return_pooled=False):
        return torch.zeros(1, 77, 6), torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])


def test_node_schema_and_execute(metrics_node):
    node = metrics_node.VideoQualityMetrics
    assert metrics_node.METRICS_NODES == [node]
    schema = node.define_schema()
    assert schema.category == "StreamingT2V/metrics" and schema.node_id == "VideoQualityMetrics"
    frames = torch.from_numpy(panning(smooth_texture(7), frames=6, shift=1, size=32))
    out = node.execute(frames, "dis", 9.5, 32, 120, 20)
    report, js, mawe, motion, warp_error, scuts, clip_score, seam, max_delta_e = out.result
    assert math.isnan(seam) and max_delta_e < 1e-3  # 6 frames: too few to find borders; a pan keeps its colour
    assert json.loads(js)["frames"] == 6 and "MAWE" in report and scuts == 0
    assert math.isfinite(mawe) and motion > 0.5 and math.isnan(clip_score)
    static = frames[:1].repeat(4, 1, 1, 1)
    assert node.execute(static, "dis", 9.5, 32, 120, 20).result[2] == math.inf
    with pytest.raises(ValueError, match="clip_vision"):
        node.execute(frames, "dis", 9.5, 32, 120, 20, prompt="a pan", clip=FakeClip())
    result = node.execute(frames, "dis", 9.5, 32, 120, 20, prompt="a pan", clip=FakeClip(),
                          clip_vision=FakeClipVision()).result
    m = torch.from_numpy(M.to_uint8_frames(frames.numpy())).double().mean(dim=(1, 2)) / 255
    emb = torch.cat([m, 1 - m], dim=1)
    expected = float((100 * emb[:, 0] / emb.norm(dim=1)).mean())  # text embedding is the first axis
    assert result[6] == pytest.approx(expected, abs=1e-4)
    assert json.loads(result[1])["clip_model"] == "comfy:CLIP_VISION+CLIP"
    with pytest.raises(ValueError, match="one CLIP model"):  # 4-d images against a 6-d text embedding
        node.execute(frames, "dis", 9.5, 32, 120, 20, prompt="a pan", clip=FakeClip(),
                     clip_vision=FakeClipVision(dim=4))
