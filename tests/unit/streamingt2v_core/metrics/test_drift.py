"""The colour drift (streamingt2v_core.metrics.drift): ΔE 0 and std 0 on a constant video, the ΔE curve of known
colour shifts against cv2's own CIELAB values, the window layout, and clear errors."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from streamingt2v_core import metrics as M
from tests.support.metrics_videos import constant_colors, noise_texture

pytestmark = pytest.mark.native_blend

GREY, ORANGE, WARM_GREY = (0.5, 0.5, 0.5), (0.8, 0.4, 0.3), (0.55, 0.5, 0.45)


def lab(rgb) -> np.ndarray:
    """cv2's CIELAB of one colour, independent of the module's per-frame path."""
    return cv2.cvtColor(np.array([[rgb]], np.float32), cv2.COLOR_RGB2Lab)[0, 0].astype(np.float64)


def delta_e(c1, c2) -> float:
    return float(np.linalg.norm(lab(c1) - lab(c2)))


def test_a_constant_video_does_not_drift():
    r = M.color_drift(constant_colors([ORANGE], frames_each=40))
    assert [(c["start"], c["end"]) for c in r.curve] == [(0, 16), (16, 32), (24, 40)]
    assert r.max_delta_e < 1e-3 and all(c["delta_e"] < 1e-3 for c in r.curve)
    assert all(c["std"] == pytest.approx([0, 0, 0], abs=1e-9) for c in r.curve)
    assert all(c["mean"] == pytest.approx(lab(ORANGE).tolist(), abs=1e-4) for c in r.curve)


def test_known_colour_shifts_give_cv2_delta_e_against_the_first_window():
    # grey, then orange (far from grey), then a warm grey (near grey): against the first window the curve is
    # [0, dE(grey, orange), dE(grey, warm grey)]; against the last window, between consecutive windows or in RGB
    # it would differ by far more than 1%
    r = M.color_drift(constant_colors([GREY, ORANGE, WARM_GREY], frames_each=16), window=16, step=16)
    expected = [0.0, delta_e(GREY, ORANGE), delta_e(GREY, WARM_GREY)]
    assert [c["start"] for c in r.curve] == [0, 16, 32]
    assert [c["delta_e"] for c in r.curve] == pytest.approx(expected, rel=0.01, abs=1e-6)
    assert r.max_delta_e == pytest.approx(delta_e(GREY, ORANGE), rel=0.01) and r.max_at == 16
    assert abs(r.max_delta_e - delta_e(WARM_GREY, ORANGE)) > 0.05 * r.max_delta_e  # the last-window reference
    assert abs(r.max_delta_e - 100 * np.linalg.norm(np.subtract(GREY, ORANGE))) > 0.05 * r.max_delta_e  # RGB
    d = r.to_dict()
    assert d["max_delta_e"] == r.max_delta_e and len(d["curve"]) == 3 and d["delta_e"] == "CIE76"


def test_a_window_across_a_colour_change_has_the_mean_and_std_of_all_its_pixels():
    frames = np.concatenate([constant_colors([GREY, ORANGE], frames_each=6, size=8),
                             noise_texture(1, 8, 8)[None].repeat(4, axis=0)])
    r = M.color_drift(frames, window=8, step=4)
    assert [(c["start"], c["end"]) for c in r.curve] == [(0, 8), (4, 12), (8, 16)]
    for c in r.curve:
        pixels = np.concatenate([cv2.cvtColor(f, cv2.COLOR_RGB2Lab).reshape(-1, 3)
                                 for f in frames[c["start"]:c["end"]]]).astype(np.float64)
        assert c["mean"] == pytest.approx(pixels.mean(axis=0).tolist(), abs=1e-6)
        assert c["std"] == pytest.approx(pixels.std(axis=0).tolist(), abs=1e-6)
    first = np.asarray(r.curve[0]["mean"])
    assert r.curve[2]["delta_e"] == pytest.approx(np.linalg.norm(np.asarray(r.curve[2]["mean"]) - first))


def test_uint8_frames_and_short_videos():
    u8 = (constant_colors([GREY, ORANGE], frames_each=3) * 255).round().astype(np.uint8)
    r = M.color_drift(u8, window=3, step=3)
    assert r.max_delta_e == pytest.approx(delta_e(u8[0, 0, 0] / 255, u8[-1, 0, 0] / 255), rel=1e-4)
    short = M.color_drift(u8, window=16, step=16)  # a video shorter than the window is one window
    assert [(c["start"], c["end"]) for c in short.curve] == [(0, 6)] and short.window == 6
    assert M.drift_windows(40, 16, 16) == [(0, 16), (16, 32), (24, 40)]
    assert M.drift_windows(48, 16, 8) == [(0, 16), (8, 24), (16, 32), (24, 40), (32, 48)]


@pytest.mark.parametrize("window, step, match", [(0, 16, "drift window must be an int >= 1"),
                                                 (16, 0, "drift step must be an int >= 1"),
                                                 (2.5, 16, "drift window")])
def test_bad_windows_give_a_clear_error(window, step, match):
    with pytest.raises(ValueError, match=match):
        M.color_drift(constant_colors([GREY], frames_each=4), window=window, step=step)
