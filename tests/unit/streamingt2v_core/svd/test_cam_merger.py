import pytest
import torch

from streamingt2v_core.svd import config
from streamingt2v_core.svd.cam import CAMFrameEncoder
from streamingt2v_core.svd.merger import SkipMerger, load_mergers
from streamingt2v_core.svd.weights import FRAME_ENCODER_PREFIX, merger_prefix, official_shapes


def test_frame_encoder_state_dict_is_the_official_layout_on_meta():
    real = {k[len(FRAME_ENCODER_PREFIX):]: s for k, s in official_shapes().items() if k.startswith(FRAME_ENCODER_PREFIX)}
    with torch.device("meta"):
        enc = CAMFrameEncoder()  # official widths 32, 96, 256, 512
    assert {k: tuple(v.shape) for k, v in enc.state_dict().items()} == real
    assert CAMFrameEncoder.channels_of(real) == ([32, 96, 256, 512], 320, 3)
    assert CAMFrameEncoder.shape_problems(real) == []


def test_frame_encoder_from_state_dict_downsamples_by_eight():
    torch.manual_seed(0)
    sd = CAMFrameEncoder((8, 16, 24, 32)).state_dict()
    enc = CAMFrameEncoder.from_state_dict(sd)
    assert enc.channels == [8, 16, 24, 32]
    out = enc(torch.rand(3, 3, 32, 48) * 2 - 1)
    assert out.shape == (3, config.CAM_CHANNELS, 4, 6)


def test_frame_encoder_names_a_mis_shaped_tensor():
    shapes = {k: list(v.shape) for k, v in CAMFrameEncoder((8, 16, 24, 32)).state_dict().items()}
    shapes["norms.3.weight"] = [23]
    assert [r[0] for r in CAMFrameEncoder.shape_problems(shapes)] == ["norms.3.weight"]


@pytest.mark.parametrize("name", list(range(12)) + ["mid"])
def test_merger_state_dicts_are_the_official_layout_on_meta(name):
    prefix = merger_prefix(name)
    real = {k[len(prefix):]: s for k, s in official_shapes().items() if k.startswith(prefix)}
    with torch.device("meta"):
        merger = SkipMerger(real["temporal_transformer.norm.weight"][0])
    assert {k: tuple(v.shape) for k, v in merger.state_dict().items()} == real
    assert merger.temporal_transformer.attention.heads == real["temporal_transformer.norm.weight"][0] // 64


def test_merger_is_per_video_and_residual():
    torch.manual_seed(0)
    merger = SkipMerger(64).eval()
    skip, cam = torch.randn(2 * 5, 64, 2, 3), torch.randn(2 * 3, 64, 2, 3)
    with torch.no_grad():
        both = merger(skip, cam, 5, 3)
        first = merger(skip[:5], cam[:3], 5, 3)
    torch.testing.assert_close(both[:5], first)
    with torch.no_grad():
        torch.nn.init.zeros_(merger.temporal_transformer.proj_out.weight)
        torch.nn.init.zeros_(merger.temporal_transformer.proj_out.bias)
        assert torch.equal(merger(skip, cam, 5, 3), skip)  # zero proj_out (official init): the skip unchanged
    with pytest.raises(ValueError):
        merger(skip, cam[:4], 5, 3)


def test_load_mergers_from_flat_or_parts():
    torch.manual_seed(0)
    parts = {n: SkipMerger(64).state_dict() for n in config.MERGER_NAMES}
    flat = {merger_prefix(n) + k: v for n, sd in parts.items() for k, v in sd.items()}
    for source in (parts, flat):
        mergers = load_mergers(source)
        assert sorted(mergers, key=str) == sorted(config.MERGER_NAMES, key=str)
        assert torch.equal(mergers["mid"].temporal_transformer.proj_in.weight, parts["mid"]["temporal_transformer.proj_in.weight"])
    with pytest.raises(KeyError):
        load_mergers({k: v for k, v in flat.items() if "mid_block" not in k})
