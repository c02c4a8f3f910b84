"""MAWE (streamingt2v_core.metrics.mawe): the official forward splat, warp error and ratio on hand examples."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streamingt2v_core import metrics as M


def test_forward_warp_hand_example_collisions_last_write_wins():
    # 1 channel, 2x3; values are not ordered like the source indices, so "max value" or "first write"
    # implementations give other answers.
    image = torch.tensor([[[9.0, 2.0, 3.0], [1.0, 5.0, 6.0]]])
    dx = torch.tensor([[1.0, 0.0, 0.5], [1.0, 0.6, 1.0]])
    dy = torch.tensor([[0.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    # (0,0)->(0,1); (0,1)->(0,1); (1,0)->(0,1): three-way collision, source (1,0) is last -> 1.
    # (0,2): x = round(2.5) = 2 (half to even, as torch.round) -> stays, value 3.
    # (1,1): x = round(1.6) = 2 -> (1,2), value 5.  (1,2): x = 3 is outside -> dropped.
    warped, known = M.forward_warp(image, torch.stack([dx, dy]))
    assert known.tolist() == [[False, True, True], [False, False, True]]
    assert warped.tolist() == [[[0.0, 1.0, 3.0], [0.0, 0.0, 5.0]]]


def test_pair_warp_error_hand_example_and_no_known_fallback():
    left = np.repeat(np.array([[9, 2, 3], [1, 5, 6]], dtype=np.uint8)[..., None], 3, axis=2)
    right = np.full((2, 3, 3), 2, dtype=np.uint8)
    flow = np.zeros((2, 3, 2), dtype=np.float32)
    flow[..., 0] = [[1.0, 0.0, 0.5], [1.0, 0.6, 1.0]]
    flow[..., 1] = [[0.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]
    # known targets hold 1, 3, 5 against 2: (1 + 1 + 9) per channel, 3 channels, over 9 pixel-channels
    assert M.pair_warp_error(left, right, flow) == pytest.approx(33.0 / 9.0, abs=1e-12)
    # everything leaves the frame: nothing known, the official code divides by all elements -> 0
    assert M.pair_warp_error(left, right, np.full((2, 3, 2), 10.0, dtype=np.float32)) == 0.0


def test_forward_warp_matches_a_pixel_loop_of_the_official_algorithm():
    rng = np.random.default_rng(3)
    h, w = 9, 11
    image = rng.random((3, h, w))
    flow = rng.normal(0.0, 2.5, (2, h, w)).astype(np.float32)
    flow[:, 2, 3] = [0.5, -1.5]  # exact halves: half to even
    expected = np.zeros_like(image)
    known = np.zeros((h, w), dtype=bool)
    for y in range(h):  # row-major: later sources overwrite earlier ones
        for x in range(w):
            tx = int(torch.round(torch.tensor(np.float32(x) + flow[0, y, x])))
            ty = int(torch.round(torch.tensor(np.float32(y) + flow[1, y, x])))
            if 0 <= tx < w and 0 <= ty < h:
                expected[:, ty, tx] = image[:, y, x]
                known[ty, tx] = True
    warped, got_known = M.forward_warp(torch.from_numpy(image), torch.from_numpy(flow))
    assert np.array_equal(got_known.numpy(), known)
    assert np.array_equal(warped.numpy(), expected)
    assert 0 < known.sum() < h * w  # the case has both collisions/holes and hits


def test_mawe_is_the_mean_of_per_pair_ratios():
    r = M.mawe_from_pairs([9.5, 0.0], [1.0, 10.0], coeff=9.5, size=720)
    assert r["mawe"] == pytest.approx(0.5)  # ratios 1 and 0; a ratio of means would be 0.18
    assert r["motion"] == pytest.approx(5.5) and r["warp_error"] == pytest.approx(4.75)
    assert not r["stagnant"] and r["frozen_pairs"] == 0


def test_nearly_static_video_is_stagnant_by_the_motion_threshold():
    # tiny motion with a warp error would give a *small* official ratio; the threshold flags it
    r = M.mawe_from_pairs([0.5, 0.5], [0.05, 0.04], size=720)
    assert r["stagnant"] and r["mawe"] == math.inf
    r = M.mawe_from_pairs([0.5, 0.5], [0.05, 0.04], stagnation_motion=0.01, size=720)
    assert not r["stagnant"] and r["mawe"] == pytest.approx(np.mean([0.5 / (9.5 * 0.05), 0.5 / (9.5 * 0.04)]))
