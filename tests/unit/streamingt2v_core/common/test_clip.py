"""common.clip: the OpenAI CLIP normalisation, as open_clip defines it."""
import open_clip.constants

from streamingt2v_core.common.clip import CLIP_MEAN, CLIP_STD


def test_openai_clip_normalisation():
    assert CLIP_MEAN == open_clip.constants.OPENAI_DATASET_MEAN
    assert CLIP_STD == open_clip.constants.OPENAI_DATASET_STD
