"""Optical flow for MAWE (streamingt2v_core.metrics.flow): OpenCV Farneback and torchvision RAFT."""
from __future__ import annotations

import math

import pytest
import torch

from streamingt2v_core import metrics as M
from streamingt2v_core.metrics.flow import RAFT_WEIGHTS_ENV, get_flow
from tests.support.metrics_videos import noise_texture, panning


def test_farneback_flow_finds_a_translation():
    frames = panning(noise_texture(5), frames=3, shift=2, size=48)  # 4 px per frame at 96x96
    r = M.compute_metrics(frames, flow=get_flow("farneback"), size=96)
    assert r.flow == "opencv-farneback" and all(abs(m - 4.0) < 0.4 for m in r.motion_per_pair)


def test_raft_is_used_when_its_weights_file_is_given(tmp_path, monkeypatch):
    from safetensors.torch import save_file
    from torchvision.models.optical_flow import raft_large

    torch.manual_seed(0)
    weights = tmp_path / "raft_large.safetensors"
    save_file({k: v.contiguous() for k, v in raft_large(weights=None).state_dict().items()}, str(weights))
    monkeypatch.setenv(RAFT_WEIGHTS_ENV, str(weights))
    flow = get_flow("auto")
    assert flow.name == "raft-large"
    frames = M.to_uint8_frames(panning(noise_texture(4), frames=3, shift=1, size=64))
    r = M.compute_metrics(frames, flow=flow, size=128)
    assert r.flow == "raft-large" and len(r.motion_per_pair) == 2 and math.isfinite(r.motion)
    monkeypatch.delenv(RAFT_WEIGHTS_ENV)
    assert get_flow("auto").name == "opencv-dis-medium"
    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad))
    with pytest.raises(ValueError, match="raft_large"):
        get_flow("raft", bad)
    with pytest.raises(FileNotFoundError):
        get_flow("auto", tmp_path / "missing.pth")
