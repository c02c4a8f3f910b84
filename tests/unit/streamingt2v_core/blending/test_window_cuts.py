"""Randomized blending over arbitrary context windows (blending/cuts.py: window_owners, step_cuts, step_owners)."""
from __future__ import annotations

import math

import pytest
import torch

from streamingt2v_core.blending.cuts import (check_windows, cut_seed, frame_owners, step_cuts, step_owners,
                                             window_overlaps, window_owners)

pytestmark = pytest.mark.native_blend


def static_spans(frames, length, overlap):
    """Core's standard_static layout: stride length-overlap, the last window moved back to end at the video's end."""
    spans, start = [], 0
    while True:
        if start + length >= frames:
            spans.append((frames - length, frames))
            return spans
        spans.append((start, start + length))
        start += length - overlap


@pytest.mark.parametrize("frames,length,overlap", [(21, 11, 4), (40, 16, 4), (30, 8, 3), (100, 16, 8), (17, 16, 8)])
def test_every_frame_has_exactly_one_owner_inside_its_window(frames, length, overlap):
    spans = static_spans(frames, length, overlap)
    for step in range(40):
        owner = step_owners(frames, spans, seed=7, step=step)
        assert owner.shape == (frames,)
        for f in range(frames):
            a, b = spans[int(owner[f])]
            assert a <= f < b, (step, f, spans[int(owner[f])])
        # one-hot weights per window sum to exactly 1 on every frame
        weights = torch.stack([(owner == k).double() for k in range(len(spans))])
        assert torch.equal(weights.sum(0), torch.ones(frames, dtype=torch.float64))


def test_cut_frequencies_match_the_paper_within_4_sigma():
    """Frame j (from the left border) of an overlap of o frames takes the right window with p = (j+1)/o."""
    frames, length, overlap = 56, 16, 6
    spans = [(0, 16), (10, 26), (20, 36), (30, 46), (40, 56)]
    assert window_overlaps(spans) == [overlap] * 4
    draws = 0
    right = torch.zeros(len(spans) - 1, overlap)
    for seed in range(50):
        for step in range(40):
            owner = step_owners(frames, spans, seed, step)
            for k in range(1, len(spans)):
                start = spans[k][0]
                right[k - 1] += (owner[start:start + overlap] == k).double()
            draws += 1
    for k in range(len(spans) - 1):
        for j in range(overlap):
            p = (j + 1) / overlap
            sigma = math.sqrt(p * (1 - p) / draws) if 0 < p < 1 else 0.0
            assert abs(right[k, j] / draws - p) <= 4 * sigma + 1e-12, (k, j, float(right[k, j] / draws), p)
    # the last overlap frame always comes from the right window, the first from the left 5/6 of the time
    assert torch.all(right[:, -1] == draws)


def test_same_seed_same_cuts_other_seed_or_step_other_cuts():
    overlaps = [8] * 30
    a = step_cuts(overlaps, seed=3, step=5)
    assert torch.equal(a, step_cuts(overlaps, seed=3, step=5))
    assert not torch.equal(a, step_cuts(overlaps, seed=4, step=5))
    assert not torch.equal(a, step_cuts(overlaps, seed=3, step=6))
    assert int(a.min()) >= 0 and int(a.max()) <= 7


def test_each_cut_depends_only_on_seed_step_and_overlap_index():
    """(seed, step, overlap index) seed one cut: a longer video keeps the cuts of the shorter one's overlaps."""
    short = step_cuts([8] * 5, seed=11, step=2)
    long = step_cuts([8] * 12, seed=11, step=2)
    assert torch.equal(long[:5], short)
    assert len({cut_seed(0, s, k) for s in range(50) for k in range(50)}) == 2500


def test_touching_windows_take_no_cut():
    owner = window_owners(8, [(0, 4), (4, 8)], step_cuts(window_overlaps([(0, 4), (4, 8)]), 0, 0))
    assert owner.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_chunk_layout_equals_the_official_overwrite_rule():
    """frame_owners (the refiner's chunks) is window_owners on equal chunks: chunk k overwrites from start+r."""
    starts, clen = [0, 16, 32], 24
    owner, local = frame_owners(56, starts, clen, torch.tensor([3, 7]))
    expect = [0] * 19 + [1] * (39 - 19) + [2] * (56 - 39)
    assert owner.tolist() == expect
    assert local[19] == 3 and local[39] == 7


@pytest.mark.parametrize("spans,frames,msg", [
    ([], 8, "no windows"),
    ([(0, 4), (5, 8)], 8, "frames 4..4 are in no window"),
    ([(0, 4), (2, 6)], 8, "frames 6..7 are in no window"),
    ([(0, 6), (0, 8)], 8, "sorted by start"),
    ([(0, 9)], 8, "outside"),
])
def test_bad_windows_are_refused(spans, frames, msg):
    with pytest.raises(ValueError, match=msg):
        check_windows(frames, spans)
