"""The seam score (streamingt2v_core.metrics.seams): ~1 on a smooth pan, high with a jump every 16 frames (given
borders and detected: period 16 and the right phase), the border formulas, and clear errors for bad borders."""
from __future__ import annotations

import math

import numpy as np
import pytest

from streamingt2v_core import metrics as M
from tests.support.metrics_videos import noise_texture, pan_with_jumps, panning, smooth_texture

pytestmark = pytest.mark.native_blend


@pytest.fixture(scope="module")
def smooth_pan():
    return panning(smooth_texture(3), frames=64, shift=1, size=128)


@pytest.fixture(scope="module")
def jumps():
    """A 1 px/frame pan with a 3 px jump into frames 16, 32, 48."""
    return pan_with_jumps(smooth_texture(3), frames=64, size=128, period=16, jump=3)


def test_frame_change_is_the_mean_absolute_difference_of_consecutive_frames():
    frames = np.random.default_rng(0).random((5, 8, 8, 3)).astype(np.float32)
    expected = [np.abs(frames[t] - frames[t - 1]).mean() for t in range(1, 5)]
    assert M.frame_changes(frames) == pytest.approx(expected, rel=1e-6)
    u8 = (frames * 255).round().astype(np.uint8)  # uint8 frames are read as x / 255
    assert M.frame_changes(u8) == pytest.approx([np.abs(u8[t] / 255 - u8[t - 1] / 255).mean() for t in range(1, 5)],
                                                rel=1e-5)


@pytest.mark.parametrize("kwargs", [dict(chunk=16, overlap=8), dict(chunk=16), dict(borders=[10, 30, 50]), dict()],
                         ids=["chunk16-overlap8", "chunk16", "list", "detected"])
def test_a_smooth_pan_has_no_seam(smooth_pan, kwargs):
    r = M.seam_score(smooth_pan, **kwargs)
    assert r.score == pytest.approx(1.0, abs=0.1), r
    assert r.inside_mean > 0 and r.border_mean > 0


def test_a_jump_every_16_frames_is_a_seam_given_and_detected(jumps):
    given = M.seam_score(jumps, chunk=16, overlap=0)
    assert given.borders == [16, 32, 48] and given.source == "given: chunk 16 overlap 0"
    assert given.score > 1.5 and given.period is None
    assert given.score == pytest.approx(given.border_mean / given.inside_mean)
    listed = M.seam_score(jumps, borders=[48, 16, 32])
    assert listed.borders == [16, 32, 48] and listed.source == "given: list" and listed.score == given.score
    found = M.seam_score(jumps)
    assert (found.period, found.phase) == (16, 0) and found.source == "detected: period 16 phase 0"
    assert found.borders == [16, 32, 48] and found.score == given.score
    # misplaced borders see no seam
    assert M.seam_score(jumps, borders=[8, 24, 40]).score < 1.0


@pytest.mark.parametrize("phase", [5, 11])
def test_detection_finds_the_phase(phase):
    v = pan_with_jumps(smooth_texture(4), frames=70, size=96, period=16, phase=phase, jump=3)
    r = M.seam_score(v)
    assert (r.period, r.phase) == (16, phase), r
    assert r.borders == list(range(phase, 70, 16)) and r.score > 1.5


def test_chunk_borders_follow_the_joins_of_the_chunks():
    assert M.chunk_borders(80, 16, 8) == [16, 24, 32, 40, 48, 56, 64, 72]  # StreamingT2V: 8 new frames a chunk
    assert M.chunk_borders(64, 16, 0) == [16, 32, 48]
    assert M.chunk_borders(65, 24, 8) == [24, 40, 56]


def test_a_static_video_scores_one_and_a_jump_between_static_frames_inf():
    still = np.repeat(noise_texture(0)[None, :16, :16], 20, axis=0)
    r = M.seam_score(still)
    assert r.score == 1.0 and r.border_mean == 0 and r.inside_mean == 0
    step = still.copy()
    step[10:] = 1 - step[10:]
    r = M.seam_score(step, borders=[10])
    assert r.score == math.inf and r.inside_mean == 0 and r.to_dict()["score"] is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(borders=[0, 16]), r"border 0 is out of range .* 1\.\.19"),
    (dict(borders=[20]), r"border 20 is out of range"),
    (dict(borders=[4, 4]), "repeat"),
    (dict(borders=[]), "empty"),
    (dict(borders=list(range(1, 20))), "fewer borders"),
    (dict(chunk=8, overlap=8), "overlap 8 must be smaller than the chunk length 8"),
    (dict(chunk=20), "leaves no border in a video of 20 frames"),
    (dict(chunk=1), "chunk length must be an int >= 2"),
    (dict(overlap=4), "needs a seam chunk length"),
    (dict(chunk=8, borders=[4]), "not both"),
])
def test_bad_borders_give_a_clear_error(kwargs, match):
    frames = np.zeros((20, 8, 8, 3), np.float32)
    with pytest.raises(ValueError, match=match):
        M.seam_score(frames, **kwargs)


def test_bad_border_types_and_too_short_videos_give_a_clear_error():
    frames = np.zeros((8, 8, 8, 3), np.float32)
    with pytest.raises(TypeError, match="integer frame indices"):
        M.seam_score(frames, borders=[2.5])
    with pytest.raises(TypeError, match="list of frame indices"):
        M.seam_score(frames, borders="4")
    with pytest.raises(ValueError, match="at least 9 frames"):  # detection needs a period of 4 seen twice
        M.seam_score(frames)
    assert M.seam_score(frames, borders=[4]).score == 1.0  # given borders need only 3 frames
    with pytest.raises(ValueError, match="at least 3"):
        M.seam_score(frames[:2], borders=[1])
