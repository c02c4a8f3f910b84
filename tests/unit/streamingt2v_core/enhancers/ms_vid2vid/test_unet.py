"""The MS-Vid2Vid-XL UNet: architecture from shapes, the official resampling, the latent size rule."""
import json

import pytest
import torch

from streamingt2v_core.enhancers.ms_vid2vid.keys import convert_official_unet
from streamingt2v_core.enhancers.ms_vid2vid.unet import build_unet, check_latent_size, infer_unet_config
from tests.support.paths import REFINER_DATA as DATA
from tools import make_tiny_refiner


def test_real_refiner_architecture_from_shapes():
    """The 1.41 B-parameter MS-Vid2Vid-XL UNet, built on the meta device from the official shapes alone."""
    rows = [line.split("\t") for line in (DATA / "refiner_unet_to_diffusers_keys.tsv").read_text().splitlines()[1:]]
    state = {r[0]: torch.empty(json.loads(r[1]), device="meta") for r in rows}
    cfg = infer_unet_config(state)
    assert cfg["block_out_channels"] == (320, 640, 1280, 1280) and cfg["layers_per_block"] == 2
    assert cfg["cross_attention_dim"] == 1024 and cfg["attention_head_dim"] == 64
    with torch.device("meta"):
        unet = build_unet(cfg)
    own = unet.state_dict()
    converted = convert_official_unet(state)
    assert set(converted) == set(own)
    assert all(converted[k].shape == own[k].shape for k in own)
    assert sum(v.numel() for v in own.values()) == 1_411_233_860
    assert unet.down_blocks[0].downsamplers[0].conv.padding == (2, 1)


def test_latent_size_rule():
    check_latent_size(90, 160)
    check_latent_size(10, 16)
    for h, w in ((88, 160), (96, 160), (90, 156)):
        with pytest.raises(ValueError, match="2 mod 8"):
            check_latent_size(h, w)


def _config(channels, head_dim):
    """What the refiner's own shape reader gave before it used common.unet3d (recorded on both UNets)."""
    return {"in_channels": 4, "out_channels": 4, "block_out_channels": channels, "layers_per_block": 2,
            "down_block_types": ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
            "up_block_types": ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
            "cross_attention_dim": 1024, "attention_head_dim": head_dim, "norm_num_groups": 32}


def _real_shapes(official: bool):
    rows = [line.split("\t") for line in (DATA / "refiner_unet_to_diffusers_keys.tsv").read_text().splitlines()[1:]]
    col = 0 if official else 2
    return {r[col]: torch.empty(json.loads(r[col + 1]), device="meta") for r in rows}


def test_config_from_shapes_is_the_old_one_in_both_layouts():
    """The UNet config read by common.unet3d (official names renamed first) equals the one the refiner's own
    reader gave: the real 1.41 B UNet (reference table shapes) and the tiny one (manifest), official and diffusers
    key names, with and without the size config."""
    real = _config((320, 640, 1280, 1280), 64)
    assert infer_unet_config(_real_shapes(official=True)) == real
    assert infer_unet_config(_real_shapes(official=False)) == real
    tiny = make_tiny_refiner.tiny_component("unet")
    size_config = json.loads((DATA / "tiny_v2v_config.json").read_text())
    expected = _config((32, 64, 128, 128), 16)
    assert infer_unet_config(tiny, size_config) == expected
    assert infer_unet_config(tiny) == expected  # 8 heads of 16 in the initial temporal transformer
    assert infer_unet_config(convert_official_unet(tiny), size_config) == expected
    assert infer_unet_config(tiny, {"unet": {"kwargs": {"head_dim": 8}}})["attention_head_dim"] == 8
