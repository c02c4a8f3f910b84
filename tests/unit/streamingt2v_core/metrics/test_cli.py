"""The metrics command line (streamingt2v_core.metrics.cli, `python -m streamingt2v_core.metrics`) on small mp4s."""
from __future__ import annotations

import json

import numpy as np
import pytest

from streamingt2v_core import metrics as M
from tests.support.metrics_videos import TINY_CLIP_CONFIG, panning, smooth_texture, write_mp4, write_tiny_clip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_cli_json_on_a_small_mp4(tmp_path, capsys, tiny_clip):
    frames = M.to_uint8_frames(panning(smooth_texture(6), frames=12, shift=2, size=64))
    video = tmp_path / "pan.mp4"
    write_mp4(video, frames)
    assert M.main([str(video), "--json", "--size", "64"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("frames", "mawe", "motion", "warp_error", "scuts", "clip_score", "flow"):
        assert key in out
    assert out["frames"] == 12 and out["flow"] == "opencv-dis-medium" and out["clip_score"] is None
    assert out["scuts"] == 0 and 1.5 < out["motion"] < 2.5 and out["mawe"] > 0
    assert M.main([str(video), "--json", "--size", "64", "--prompt", "a pan", "--clip-model", str(tiny_clip),
                   "--clip-arch", str(TINY_CLIP_CONFIG)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out["clip_score"], float) and out["clip_model"] == "open_clip:open_clip_tiny_metrics"
    assert M.main([str(video), "--size", "64"]) == 0
    assert "MAWE" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError):
        M.main([str(tmp_path / "missing.mp4")])


def test_scuts_on_a_file_equal_pyscenedetect_reading_the_file_itself(tmp_path, capsys):
    from scenedetect import AdaptiveDetector, detect

    a = panning(smooth_texture(8), frames=40, shift=1, size=64)
    b = panning(smooth_texture(9), frames=40, shift=1, size=64)
    video = tmp_path / "cut.mp4"
    write_mp4(video, M.to_uint8_frames(np.concatenate([a[:20], b[20:]])))
    own = [int(s[0].frame_num) for s in detect(str(video), AdaptiveDetector(), start_in_scene=True)[1:]]
    assert M.main([str(video), "--json", "--size", "32"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert own == [20] and out["cut_frames"] == own and out["scuts"] == 1
