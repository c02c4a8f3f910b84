"""CLIP score (streamingt2v_core.metrics.clip_score) against OpenCLIP's own preprocessing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from streamingt2v_core import metrics as M
from tests.support.metrics_videos import TINY_CLIP_CONFIG, panning, smooth_texture, write_tiny_clip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_clip_score_matches_open_clip_own_preprocessing(tiny_clip):
    import open_clip
    from PIL import Image

    scorer = M.OpenCLIPScorer.from_file(tiny_clip, str(TINY_CLIP_CONFIG))
    frames = M.to_uint8_frames(panning(smooth_texture(5), frames=4, shift=2, size=64))
    prompt = "a red balloon over a green field"
    got = M.clip_frame_scores(torch.from_numpy(frames).float() / 255, prompt, scorer.encode_images,
                              scorer.encode_text, batch_size=3)
    preprocess = open_clip.image_transform(64, is_train=False)
    with torch.no_grad():
        img = scorer.model.encode_image(torch.stack([preprocess(Image.fromarray(f)) for f in frames]))
        txt = scorer.model.encode_text(open_clip.get_tokenizer(TINY_CLIP_CONFIG.stem)([prompt]))
    expected = 100 * F.cosine_similarity(img, txt, dim=-1).double().numpy()
    assert np.allclose(got, expected, atol=1e-4)
    assert np.ptp(got) > 0  # frames differ, so do their scores
    r = M.compute_metrics(frames, prompt=prompt, clip=scorer, size=32)
    assert r.clip_score == pytest.approx(float(expected.mean()), abs=1e-4)
    assert r.clip_model == "open_clip:open_clip_tiny_metrics"
    assert M.compute_metrics(frames, clip=scorer, size=32).clip_score is None
