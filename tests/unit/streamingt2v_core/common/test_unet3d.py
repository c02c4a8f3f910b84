"""common.unet3d: the UNet3D config read off shapes (on the real and the tiny manifests, for every prefix
our loaders use) and the shared UNet3D helpers against diffusers' own forward."""
import copy

import pytest
import torch

from streamingt2v_core.common.attention import SDPAProcessor
from streamingt2v_core.common.unet3d import (build_diffusers_unet, infer_unet3d_config, spatial_cross_attentions,
                                             time_embedding, unet_encoder_forward, use_sdpa)
from streamingt2v_core.t2v.config import OFFICIAL_UNET, infer_config, load_config
from streamingt2v_core.t2v.init_modelscope import MODELSCOPE_UNET
from streamingt2v_core.t2v.model import official_state_dict_shapes

from tests.support.paths import DATA, ORACLE
from tests.support.tiny import read_manifest

REAL = {k: tuple(s) for k, s, _ in read_manifest(DATA / "streaming_t2v_manifest.tsv")}
TINY = {k: tuple(s) for k, s, _ in read_manifest(ORACLE / "tiny_manifest.tsv")}
CROSS_DOWN = ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"]
CROSS_UP = ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3
# Everything the shapes of the official base UNet say (no base: nothing else may appear)
OFFICIAL_FROM_SHAPES = {"block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
                        "down_block_types": CROSS_DOWN, "up_block_types": CROSS_UP, "in_channels": 4,
                        "out_channels": 4, "cross_attention_dim": 1024, "attention_head_dim": 64}
TINY_FROM_SHAPES = dict(OFFICIAL_FROM_SHAPES, block_out_channels=[64, 128, 192, 192], attention_head_dim=16)


def test_official_base_unet_from_shapes_alone():
    assert infer_unet3d_config(REAL, "base_model.") == OFFICIAL_FROM_SHAPES
    # the manifest and the shapes our own modules have agree
    assert infer_unet3d_config(official_state_dict_shapes(), "base_model.") == OFFICIAL_FROM_SHAPES


def test_tiny_base_unet_from_shapes_alone():
    assert infer_unet3d_config(TINY, "base_model.") == TINY_FROM_SHAPES
    ours = official_state_dict_shapes(ORACLE / "tiny_config.json")
    assert infer_unet3d_config(ours, "base_model.") == TINY_FROM_SHAPES


def test_cam_encoder_alone_mirrors_the_decoder():
    """The CAM (`unet.`) holds an encoder only: no up blocks, no conv_out."""
    cfg = infer_unet3d_config(REAL, "unet.")
    assert cfg["up_block_types"] == CROSS_UP and cfg["down_block_types"] == CROSS_DOWN
    assert "out_channels" not in cfg and cfg["in_channels"] == 4 and cfg["block_out_channels"] == [320, 640, 1280, 1280]


def test_unprefixed_modelscope_unet_gives_its_hub_config():
    """What load_modelscope_unet reads: a ModelScope UNet's own keys (no prefix) over its hub config."""
    modelscope = {k[len("base_model."):]: v for k, v in REAL.items() if k.startswith("base_model.")}
    assert infer_unet3d_config(modelscope, "", MODELSCOPE_UNET) == MODELSCOPE_UNET
    tiny = {k[len("base_model."):]: v for k, v in TINY.items() if k.startswith("base_model.")}
    assert infer_unet3d_config(tiny, "", MODELSCOPE_UNET) == dict(MODELSCOPE_UNET, **TINY_FROM_SHAPES)


def test_base_is_kept_where_shapes_are_silent_and_never_modified():
    base = {"block_out_channels": [1, 2, 3, 4], "sample_size": 7, "attention_head_dim": 3}
    kept = copy.deepcopy(base)
    partial = {k: v for k, v in REAL.items() if k != "base_model.down_blocks.2.resnets.0.conv2.weight"
               and not k.startswith("base_model.transformer_in.")}
    cfg = infer_unet3d_config(partial, "base_model.", base)
    assert base == kept
    assert cfg["block_out_channels"] == [1, 2, 3, 4]  # one level unreadable: the channel list stays whole
    assert cfg["attention_head_dim"] == 3 and cfg["sample_size"] == 7
    assert cfg["cross_attention_dim"] == 1024 and cfg["layers_per_block"] == 2


def test_stage2_config_reads_its_unet_through_it():
    assert infer_config(REAL).unet == OFFICIAL_UNET
    tiny_base = load_config(ORACLE / "tiny_config.json")
    assert infer_config(TINY, tiny_base).unet == tiny_base.unet  # the oracle's own unet config, sample_size 8 kept
    assert infer_config(TINY).unet == dict(OFFICIAL_UNET, **TINY_FROM_SHAPES)


def test_build_diffusers_unet_ignores_foreign_keys_and_has_the_official_keys():
    tiny = load_config(ORACLE / "tiny_config.json").unet
    with torch.device("meta"):
        unet = build_diffusers_unet(dict(tiny, _class_name="UNet3DConditionModel", not_an_argument=1))
    ours = {f"base_model.{k}": tuple(v.shape) for k, v in unet.state_dict().items()}
    assert all(TINY[k] == s for k, s in ours.items())  # every plain UNet3D tensor, as the checkpoint has it
    extra = {k for k in TINY if k.startswith("base_model.")} - set(ours)
    assert extra and all(".cross_attention_merger_" in k or k.split(".")[-2] in ("conv", "conv_ln")
                         or k.endswith(".alpha") for k in extra)  # what the base UNet adds: mergers, APM


def test_spatial_cross_attentions_are_the_16_spatial_attn2():
    with torch.device("meta"):
        unet = build_diffusers_unet(OFFICIAL_UNET)
    names = [n for n, _ in spatial_cross_attentions(unet)]
    # 3 cross-attention down blocks x 2 layers, the mid block, 3 up blocks x 3 layers
    assert len(names) == 16
    assert all(n.endswith(".attn2") and "temp_attentions" not in n and "transformer_in" not in n for n in names)
    assert names[0] == "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    assert sum(n.startswith("mid_block.") for n in names) == 1


@pytest.fixture(scope="module")
def small_unet():
    torch.manual_seed(0)
    cfg = dict(load_config(ORACLE / "tiny_config.json").unet, cross_attention_dim=32)
    return build_diffusers_unet(cfg).eval()


@torch.no_grad()
def test_time_embedding_per_video_repeated_per_frame(small_unet):
    one = time_embedding(small_unet, torch.tensor(5), 2, 3, torch.float32)
    assert one.shape[0] == 6 and torch.equal(one[0], one[5])  # the same timestep for every frame of both videos
    two = time_embedding(small_unet, torch.tensor([5, 9]), 2, 3, torch.float32)
    assert torch.equal(two[0], two[2]) and torch.equal(two[3], two[5])  # frames of one video share it
    # (close, not equal: the batch size changes the matmul's rounding)
    torch.testing.assert_close(two[:3], one[:3], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(two[3:], time_embedding(small_unet, torch.tensor(9), 1, 3, torch.float32),
                               rtol=1e-6, atol=1e-6)
    assert (two[0] - two[3]).abs().max() > 1e-4


@torch.no_grad()
def test_encoder_forward_equals_diffusers_forward(small_unet):
    """conv_in .. mid block as diffusers' UNet3DConditionModel runs them, with the context given once per
    video (our SDPA processor shares it across frames; diffusers repeats it per frame)."""
    g = torch.Generator().manual_seed(1)
    b, f = 2, 3
    sample = torch.randn(b, 4, f, 8, 8, generator=g)
    context = torch.randn(b, 5, 32, generator=g)
    t = torch.tensor(321)
    seen = {}
    hook = small_unet.mid_block.register_forward_hook(lambda _m, _a, out: seen.setdefault("mid", out))
    try:
        small_unet(sample, t, encoder_hidden_states=context)
    finally:
        hook.remove()
    use_sdpa(small_unet)
    assert all(isinstance(m.processor, SDPAProcessor) for m in small_unet.modules() if hasattr(m, "to_q"))
    emb = time_embedding(small_unet, t, b, f, torch.float32)
    mid, skips = unet_encoder_forward(small_unet, sample.permute(0, 2, 1, 3, 4).reshape(b * f, 4, 8, 8), emb,
                                      context, f)
    assert len(skips) == 12  # transformer_in's output, 4 levels x 2 resnets, 3 downsamplers
    torch.testing.assert_close(mid, seen["mid"], rtol=1e-5, atol=1e-5)
    added = []
    unet_encoder_forward(small_unet, sample.permute(0, 2, 1, 3, 4).reshape(b * f, 4, 8, 8), emb, context, f,
                         after_transformer_in=lambda x: added.append(x) or x + 1)
    assert len(added) == 1 and added[0].shape == skips[0].shape


@pytest.mark.parametrize("key, shape", [
    ("down_blocks.0.resnets.0.conv2.weight", ()),  # 0-d: IndexError before the ndim check
    ("down_blocks.0.resnets.0.conv2.weight", (1,)),
    ("conv_in.weight", (1,)), ("conv_out.weight", (4, 32)), ("transformer_in.proj_in.weight", (12, 64)),
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight", (64,)),
])
def test_odd_shapes_leave_the_base_value(key, shape):
    """A key shape inference reads with the wrong number of dims (or a 1-element tensor) keeps the base
    value, so the key check that follows names that key instead of an IndexError naming nothing."""
    shapes = {k[len("base_model."):]: s for k, s in TINY.items() if k.startswith("base_model.")}
    good = infer_unet3d_config(shapes, base=OFFICIAL_UNET)
    shapes[key] = shape
    odd = infer_unet3d_config(shapes, base=OFFICIAL_UNET)
    changed = {k for k in good if good[k] != odd[k]}
    assert changed <= {"block_out_channels", "in_channels", "out_channels", "attention_head_dim",
                       "cross_attention_dim"}
    for k in changed:
        assert odd[k] == OFFICIAL_UNET[k], k  # left at the base value
