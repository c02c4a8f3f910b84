"""Key validation and foreign-layout hints (streamingt2v_core.common.state_dict), with StreamingT2V's model
name, file, fix and prefixes as the example family; the shape check the refiner uses."""
from __future__ import annotations

import collections
import json

import pytest
import torch
from torch import nn

from streamingt2v_core.common import state_dict as sd
from streamingt2v_core.common.weights import CheckpointError
from tests.support.paths import DATA

PREFIXES = ("base_model", "unet", "resampler", "image_encoder", "text_encoder", "vae")
FIX = ("put the official streaming_t2v.ckpt (https://huggingface.co/PAIR/StreamingT2V, file streaming_t2v.ckpt) "
       "or a folder converted from it with `python -m streamingt2v_core.convert` in models/streamingt2v/")


def validate_state_dict(state, expected, source_name, ignore=()):
    sd.validate_state_dict(state, expected, source_name, model="StreamingT2V", expected_file="streaming_t2v.ckpt",
                           fix=FIX, prefixes=PREFIXES, ignore=ignore)


def describe_foreign_layout(keys):
    return sd.describe_foreign_layout(keys, PREFIXES, "StreamingT2V")


def small_state() -> collections.OrderedDict:
    g = torch.Generator().manual_seed(0)
    return collections.OrderedDict(
        [
            ("base_model.conv_in.weight", torch.randn(8, 4, 3, 3, generator=g)),
            ("base_model.conv_in.bias", torch.randn(8, generator=g)),
            ("unet.controlnet_cond_embedding.conv_in.weight", torch.randn(4, 3, 3, 3, generator=g)),
            ("resampler.context_embedding.0.weight", torch.randn(6, 5, generator=g)),
            ("text_encoder.text_model.embeddings.position_ids", torch.arange(7).unsqueeze(0)),
            ("vae.encoder.conv_in.bias", torch.randn(3, generator=g)),
            ("image_encoder.model.logit_scale", torch.tensor(4.6)),
        ]
    )


# ---------------------------------------------------------------------------------------------- validation


def expected_of(state) -> dict:
    return {k: tuple(v.shape) for k, v in state.items()}


def test_validate_accepts_exact_match_and_ignores_keys():
    state = small_state()
    expected = expected_of(state)
    validate_state_dict(state, expected, "x.ckpt")
    ignore = ["text_encoder.text_model.embeddings.position_ids"]
    expected.pop(ignore[0])
    with pytest.raises(CheckpointError, match="position_ids"):
        validate_state_dict(state, expected, "x.ckpt")
    validate_state_dict(state, expected, "x.ckpt", ignore=ignore)


def test_validate_lists_misshaped_missing_and_unexpected():
    state = dict(small_state())
    expected = expected_of(state)
    state["base_model.conv_in.weight"] = torch.zeros(8, 4, 1, 1)
    state["unet.extra.weight"] = torch.zeros(2)
    del state["vae.encoder.conv_in.bias"]
    with pytest.raises(CheckpointError) as err:
        validate_state_dict(state, expected, "models/streamingt2v/a.ckpt")
    msg = str(err.value)
    assert msg.startswith("models/streamingt2v/a.ckpt:")
    assert "1 missing, 1 unexpected, 1 mis-shaped" in msg
    assert "base_model.conv_in.weight: file [8, 4, 1, 1], expected [8, 4, 3, 3]" in msg
    assert "vae.encoder.conv_in.bias [3]" in msg and "unet.extra.weight [2]" in msg


def test_validate_only_misshaped_points_at_the_config():
    state = dict(small_state())
    expected = expected_of(state)
    expected["resampler.context_embedding.0.weight"] = (7, 5)
    with pytest.raises(CheckpointError, match="config JSON"):
        validate_state_dict(state, expected, "tiny.safetensors")


def test_validate_truncates_long_lists_but_counts_all():
    expected = {f"base_model.k{i:03d}": (2,) for i in range(45)}
    with pytest.raises(CheckpointError) as err:
        validate_state_dict({"base_model.k000": torch.zeros(2)}, expected, "f.ckpt")
    msg = str(err.value)
    assert "missing: 44 (first 20)" in msg
    assert "base_model.k020" in msg and "base_model.k021" not in msg


def official_expected() -> dict:
    rows = (DATA / "streaming_t2v_manifest.tsv").read_text().splitlines()[1:]
    return {r.split("\t")[0]: tuple(json.loads(r.split("\t")[1])) for r in rows}


def test_plain_diffusers_unet3d_gets_specific_hint():
    expected = official_expected()
    # What diffusers' UNet3DConditionModel.state_dict() of text-to-video-ms-1.7b looks like.
    unet3d = {k[len("base_model."):]: torch.zeros(1) for k in expected
              if k.startswith("base_model.") and "merger" not in k}
    with pytest.raises(CheckpointError) as err:
        validate_state_dict(unet3d, expected, "diffusion_pytorch_model.safetensors")
    msg = str(err.value)
    assert "this is not streaming_t2v.ckpt" in msg and "plain diffusers UNet3DConditionModel" in msg
    assert "PAIR/StreamingT2V" in msg
    assert "missing: 3407 (first 20)" in msg  # lists are still given


@pytest.mark.parametrize(
    "keys, expected_phrase",
    [
        (["model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.encoder.conv_in.weight"],
         "Stable Diffusion / LDM"),
        (["encoder.down_blocks.0.resnets.0.conv1.weight", "decoder.up_blocks.0.resnets.0.conv1.weight",
          "quant_conv.weight"], "VAE only"),
        (["input_blocks.0.0.weight", "middle_block.0.in_layers.0.weight", "time_embed.0.weight"], "refiner"),
        (["text_model.encoder.layers.0.mlp.fc1.weight"], "CLIP text encoder"),
        (["module.base_model.conv_in.weight", "module.vae.encoder.conv_in.weight"], "extra 'module.' prefix"),
        (["conv_in.weight", "down_blocks.0.attentions.0.proj_in.weight", "transformer_in.proj_in.weight"],
         "UNet3DConditionModel"),
    ],
)
def test_foreign_layout_hints(keys, expected_phrase):
    assert expected_phrase in describe_foreign_layout(keys)


def test_no_hint_for_official_keys():
    assert describe_foreign_layout(official_expected()) is None


def test_the_model_name_and_file_come_from_the_family():
    with pytest.raises(CheckpointError) as err:
        sd.validate_state_dict({"net.a": torch.zeros(1)}, {"net.a": (2,)}, "x.pth", model="Other",
                               expected_file="other.pth", fix="get other.pth", prefixes=("net",))
    msg = str(err.value)
    assert "do not match the Other model" in msg and msg.endswith("or get other.pth.")
    assert "StreamingT2V" not in msg
    with pytest.raises(CheckpointError, match=r"this is not other\.pth \(it looks like a VAE only"):
        sd.validate_state_dict({"encoder.down_blocks.0.w": torch.zeros(1)}, {"net.a": (2,)}, "x.pth",
                               model="Other", expected_file="other.pth", fix="get other.pth", prefixes=("net",))
    assert "extra 'module.' prefix" in sd.describe_foreign_layout(["module.net.a"], ("net",), "Other")


def test_check_shapes_names_file_keys_and_fix():
    module = nn.Linear(3, 2)
    sd.check_shapes(module, {"weight": torch.zeros(2, 3)}, "f.safetensors", "fix it")  # fits: no error
    with pytest.raises(CheckpointError) as err:
        sd.check_shapes(module, {"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}, "f.safetensors", "fix it")
    assert str(err.value) == ("f.safetensors: 1 tensor(s) have the wrong shape for the model:\n"
                              "  weight: expected [2, 3], found [2, 4]\nfix it")


def test_check_dtypes_names_file_key_dtype_and_fix():
    """An integer, bool or fp8 tensor where the model holds a float weight is refused before loading (torch
    would copy it into the weight, or raise a RuntimeError naming neither file nor key); fp16, bf16 and fp64
    are weights in another precision and pass."""
    expected = {"a.weight": torch.float32, "b.weight": torch.float32, "c.weight": torch.float32,
                "steps": torch.int64}
    ok = {"a.weight": torch.zeros(2, dtype=torch.float16), "b.weight": torch.zeros(2, dtype=torch.bfloat16),
          "c.weight": torch.zeros(2, dtype=torch.float64), "steps": torch.tensor(3)}
    sd.check_dtypes(ok, expected, "m.safetensors", FIX)
    bad = dict(ok, **{"a.weight": torch.zeros(2, dtype=torch.int8), "b.weight": torch.zeros(2, dtype=torch.bool),
                      "c.weight": torch.zeros(2).to(torch.float8_e4m3fn), "steps": torch.tensor(3.0)})
    with pytest.raises(CheckpointError) as err:
        sd.check_dtypes(bad, expected, "m.safetensors", FIX, names={"a.weight": "file.a"})
    msg = str(err.value)
    assert msg.startswith("m.safetensors: 4 tensor(s) have a dtype the model cannot use")
    for line in ("file.a: found int8, expected a floating-point weight", "b.weight: found bool",
                 "c.weight: found float8_e4m3fn", "steps: found float32, expected int64"):
        assert line in msg, msg
    assert "unquantised" in msg and FIX in msg
