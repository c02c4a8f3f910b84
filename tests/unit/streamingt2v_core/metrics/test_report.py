"""All metrics of a video (streamingt2v_core.metrics.report): stagnation, translation, frozen pairs, windows,
and clear errors for bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest

from streamingt2v_core import metrics as M
from streamingt2v_core.metrics.flow import RAFT_WEIGHTS_ENV, get_flow
from tests.support.metrics_videos import noise_texture, panning, smooth_texture


def test_static_video_reports_stagnation_not_a_small_number():
    frames = np.repeat(noise_texture(0)[None, :64, :64], 6, axis=0)
    r = M.compute_metrics(frames, size=64)
    assert r.motion == 0.0 and r.warp_error == 0.0
    assert r.mawe == math.inf and r.stagnant and r.frozen_pairs == 5
    d = r.to_dict()
    assert d["mawe"] is None and d["stagnant"] is True
    assert "stagnation" in r.report()


def test_translation_at_720_gives_the_shift_as_motion_and_a_small_warp_error():
    # 144 px frames panning 2 px per frame = exactly 10 px per frame at 720x720
    frames = panning(noise_texture(1), frames=3, shift=2, size=144)
    r = M.compute_metrics(frames)
    assert r.size == 720 and r.flow == "opencv-dis-medium"
    assert all(abs(m - 10.0) < 1.0 for m in r.motion_per_pair)
    # the same frames compared without motion compensation differ by thousands
    u8 = [M.resize_frame(f, 720) for f in M.to_uint8_frames(frames)]
    unwarped = M.pair_warp_error(u8[0], u8[1], np.zeros((720, 720, 2), np.float32))
    assert unwarped > 1000
    assert all(we < 10.0 for we in r.warp_error_per_pair)
    assert 0 < r.mawe < 0.2 and not r.stagnant


def test_a_duplicated_frame_in_a_moving_video_is_a_frozen_pair():
    frames = panning(noise_texture(2), frames=5, shift=3, size=48)
    frames = np.concatenate([frames[:2], frames[1:]])
    r = M.compute_metrics(frames, size=96)
    assert r.frozen_pairs == 1 and not r.stagnant and r.mawe == math.inf
    assert r.motion_per_pair[1] == 0.0 and r.motion_per_pair[0] > 3.0


def test_windows_over_time():
    assert M.window_ends(240) == list(range(120, 241, 20))
    assert M.window_ends(250)[-2:] == [240, 250]
    assert M.window_ends(120) == []
    a = panning(smooth_texture(3), frames=40, shift=1, size=32)
    b = panning(smooth_texture(4), frames=40, shift=1, size=32)
    r = M.compute_metrics(np.concatenate([a[:20], b[20:]]), size=32, window_start=10, window_step=10)
    assert [w["end"] for w in r.windows] == [10, 20, 30, 40]
    assert [w["scuts"] for w in r.windows] == [0, 0, 1, 1] and r.scuts == 1 and r.cut_frames == [20]
    first = M.mawe_from_pairs(r.warp_error_per_pair[:9], r.motion_per_pair[:9], size=32)
    assert r.windows[0]["mawe"] == pytest.approx(first["mawe"])
    assert r.windows[-1]["mawe"] == pytest.approx(r.mawe)


@pytest.mark.parametrize("frames", [np.zeros((0, 8, 8, 3), np.float32), np.zeros((2, 8, 8, 3), np.float32)])
def test_too_short_videos_give_a_clear_error(frames):
    with pytest.raises(ValueError, match="at least 3"):
        M.compute_metrics(frames, size=16)


def test_bad_layout_and_values_give_a_clear_error():
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        M.compute_metrics(np.zeros((5, 3, 8, 8), np.float32), size=16)
    with pytest.raises(ValueError, match="NaN"):
        M.compute_metrics(np.full((5, 8, 8, 3), np.nan, np.float32), size=16)
    with pytest.raises(ValueError, match="flow method"):
        get_flow("sparse")
    with pytest.raises(ValueError, match=RAFT_WEIGHTS_ENV):
        get_flow("raft")
