"""SCuts (streamingt2v_core.metrics.scuts): PySceneDetect on in-memory frames."""
from __future__ import annotations

import numpy as np

from streamingt2v_core import metrics as M
from tests.support.metrics_videos import panning, smooth_texture


def test_scuts_one_hard_cut_and_none_without():
    a = panning(smooth_texture(1), frames=40, shift=1, size=64)
    b = panning(smooth_texture(2), frames=40, shift=1, size=64)
    with_cut = np.concatenate([a[:20], b[20:]])
    assert M.scene_cuts(M.to_uint8_frames(with_cut)) == [20]
    assert M.scene_cuts(M.to_uint8_frames(a)) == []
