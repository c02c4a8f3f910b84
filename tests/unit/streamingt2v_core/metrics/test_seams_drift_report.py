"""The seam score and the colour drift in `compute_metrics` and the command line: new JSON keys `seam_score` and
`color_drift`, the old keys and their values unchanged, the new flags, and input errors before the flow work."""
from __future__ import annotations

import json

import numpy as np
import pytest

from streamingt2v_core import metrics as M
from tests.support.metrics_videos import constant_colors, pan_with_jumps, smooth_texture, write_mp4

pytestmark = pytest.mark.native_blend

# the report's keys before the seam and drift metrics (issue 12): they stay as they were
OLD_KEYS = {"frames", "mawe", "motion", "warp_error", "stagnant", "frozen_pairs", "scuts", "cut_frames", "clip_score",
            "clip_model", "flow", "size", "coeff", "windows"}


class NoFlow:
    """A flow estimator that must not be called (input errors come first)."""
    name = "no-flow"

    def __call__(self, left, right):
        raise AssertionError("the flow ran before the input check")


@pytest.fixture(scope="module")
def jump_video(tmp_path_factory):
    frames = M.to_uint8_frames(pan_with_jumps(smooth_texture(5), frames=48, size=64, period=16, jump=3))
    path = tmp_path_factory.mktemp("seams") / "jumps.mp4"
    write_mp4(path, frames)
    return path


def test_compute_metrics_reports_seams_and_drift():
    frames = pan_with_jumps(smooth_texture(5), frames=40, size=48, period=16, jump=3)
    r = M.compute_metrics(frames, size=32, window_start=20, window_step=20, seam_chunk=16)
    assert r.seam.borders == [16, 32] and r.seam.score > 1.5 and r.color_drift.window == 16
    assert r.seam.score == M.seam_score(frames, chunk=16).score
    assert r.color_drift.curve == M.color_drift(frames).curve
    d = r.to_dict()
    assert set(d) == OLD_KEYS | {"seam_score", "color_drift"}
    assert d["seam_score"]["source"] == "given: chunk 16 overlap 0" and d["color_drift"]["max_delta_e"] >= 0
    assert "seam score:" in r.report() and "ΔE" in r.report()
    found = M.compute_metrics(frames, size=32, window_start=20, window_step=20)
    assert found.seam.source == "detected: period 16 phase 0"
    short = M.compute_metrics(frames[:6], size=32)  # too short to detect: no seam score, the rest as before
    assert short.seam is None and short.to_dict()["seam_score"] is None and "n/a" in short.report()


@pytest.mark.parametrize("kwargs, match", [(dict(seam_chunk=16, seam_overlap=16), "smaller than the chunk length"),
                                           (dict(seam_borders=[0]), "border 0 is out of range"),
                                           (dict(seam_overlap=4), "needs a seam chunk length"),
                                           (dict(drift_window=0), "drift window")])
def test_bad_seam_and_drift_inputs_fail_before_the_flow(kwargs, match):
    frames = constant_colors([(0.2, 0.3, 0.4)], frames_each=20)
    with pytest.raises(ValueError, match=match):
        M.compute_metrics(frames, flow=NoFlow(), size=16, **kwargs)


def test_cli_json_has_the_new_keys_and_the_old_ones_unchanged(jump_video, capsys):
    base = [str(jump_video), "--json", "--size", "32", "--window-start", "16", "--window-step", "16"]
    assert M.main(base) == 0
    detected = json.loads(capsys.readouterr().out)
    assert set(detected) == OLD_KEYS | {"seam_score", "color_drift"}
    assert detected["seam_score"]["source"] == "detected: period 16 phase 0"
    assert detected["seam_score"]["borders"] == [16, 32] and detected["seam_score"]["score"] > 1.5
    curve = detected["color_drift"]["curve"]
    assert [c["start"] for c in curve] == [0, 16, 32] and curve[0]["delta_e"] == 0.0
    assert detected["color_drift"]["max_delta_e"] == max(c["delta_e"] for c in curve)

    assert M.main(base + ["--seam-chunk", "16", "--seam-overlap", "8", "--drift-window", "8",
                          "--drift-step", "4"]) == 0
    chunked = json.loads(capsys.readouterr().out)
    assert chunked["seam_score"]["source"] == "given: chunk 16 overlap 8"
    assert chunked["seam_score"]["borders"] == [16, 24, 32, 40]
    assert chunked["color_drift"]["window"] == 8 and chunked["color_drift"]["step"] == 4
    assert len(chunked["color_drift"]["curve"]) == 11
    assert {k: chunked[k] for k in OLD_KEYS} == {k: detected[k] for k in OLD_KEYS}  # old values untouched

    assert M.main(base + ["--seam-borders", "16,32"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["seam_score"]["source"] == "given: list" and listed["seam_score"]["score"] == pytest.approx(
        detected["seam_score"]["score"])
    assert M.main([str(jump_video), "--size", "32", "--seam-chunk", "16"]) == 0
    assert "seam score:" in capsys.readouterr().out


@pytest.mark.parametrize("flags, match", [(["--seam-borders", "16;32"], "comma-separated"),
                                          (["--seam-chunk", "16", "--seam-borders", "16"], "not allowed with"),
                                          (["--seam-overlap", "8"], "--seam-overlap needs --seam-chunk")])
def test_cli_rejects_bad_seam_flags(jump_video, capsys, flags, match):
    with pytest.raises(SystemExit) as e:
        M.main([str(jump_video), "--json"] + flags)
    assert e.value.code == 2 and match in capsys.readouterr().err


def test_cli_border_out_of_range_names_the_border(jump_video):
    with pytest.raises(ValueError, match="border 48 is out of range"):
        M.main([str(jump_video), "--json", "--size", "32", "--seam-borders", "16,48"])
