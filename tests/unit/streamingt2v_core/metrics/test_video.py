"""Frames for the metrics (streamingt2v_core.metrics.video): the working-size resize of mawe.py."""
from __future__ import annotations

import numpy as np
import torch

from streamingt2v_core import metrics as M


def test_resize_equals_torchvision_uint8_resize_without_antialias():
    import torchvision.transforms.functional as TF

    frame = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    ours = M.resize_frame(frame, 72)
    theirs = TF.resize(torch.from_numpy(frame).permute(2, 0, 1), [72, 72], antialias=False)
    assert np.array_equal(ours, theirs.permute(1, 2, 0).numpy())


def test_float_frames_outside_0_1_are_refused_not_clipped():
    """A float video in 0..255 (or in [-1, 1]) used to be clipped to white (or black) frames and scored."""
    import pytest

    frames = np.random.default_rng(1).random((4, 8, 8, 3)).astype(np.float32)
    assert M.to_uint8_frames(frames).max() > 200
    assert np.array_equal(M.to_uint8_frames(np.clip(frames * 1.2 - 0.1, 0, 1)),
                          M.to_uint8_frames(frames * 1.2 - 0.1))  # small overshoots are clipped as before
    with pytest.raises(ValueError, match=r"`frames`.*0\.\.1.*/ 255"):
        M.to_uint8_frames(frames * 255)
    with pytest.raises(ValueError, match=r"`frames`.*0\.\.1.*\(x \+ 1\) / 2"):
        M.to_uint8_frames(torch.from_numpy(frames * 2 - 1))
