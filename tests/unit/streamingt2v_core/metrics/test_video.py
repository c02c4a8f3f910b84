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
