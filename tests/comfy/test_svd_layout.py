"""The real StreamingSVD `model.safetensors` layout (tests/data/svd/streaming_svd_manifest.tsv: every key and
shape of the official checkpoint, 3,246 keys) against what ComfyUI and the pack expect, on the meta device:
no weights, real sizes. In-process against the ComfyUI of this leg."""
from __future__ import annotations

import pytest
import torch

from tests.support.comfy_inproc import import_comfy
from tests.support.paths import ROOT

pytestmark = [pytest.mark.svd_oracle, pytest.mark.compat]

MANIFEST = ROOT / "tests" / "data" / "svd" / "streaming_svd_manifest.tsv"
BASE = "model.diffusion_model."
MERGER = BASE + "cross_attention_merger_"


@pytest.fixture(scope="module")
def shapes():
    from streamingt2v_core.svd.weights import read_shape_manifest

    out = read_shape_manifest(MANIFEST)
    assert len(out) == 3246
    return out


@pytest.fixture(scope="module")
def detected(shapes):
    """ComfyUI's own detection on the real layout: (model config, UNetModel built from it on meta)."""
    import_comfy()
    import comfy.model_detection
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    sd = {k: torch.empty(s, device="meta") for k, s in shapes.items() if k.startswith(BASE)}
    config = comfy.model_detection.model_config_from_unet(sd, BASE)
    unet = UNetModel(**config.unet_config, device="meta", operations=comfy.ops.disable_weight_init)
    return config, unet


def test_comfyui_detects_svd_and_only_the_mergers_are_unexpected(shapes, detected):
    config, unet = detected
    assert type(config).__name__ == "SVD_img2vid"
    own = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    base = {k[len(BASE):]: s for k, s in shapes.items() if k.startswith(BASE)}
    assert set(own) - set(base) == set(), "keys ComfyUI's SVD UNet needs that the checkpoint lacks"
    unexpected = set(base) - set(own)
    assert unexpected == {k[len(BASE):] for k in shapes if k.startswith(MERGER)}
    assert len(unexpected) == 143
    assert all(own[k] == base[k] for k in own), [k for k in own if own[k] != base[k]][:5]


def test_the_cam_is_comfyuis_unet_input_path_with_the_packs_frame_encoder(shapes, detected):
    from streamingt2v_core.svd.weights import CAM_PREFIX, FRAME_ENCODER_PREFIX, expected_keys, official_shapes

    _, unet = detected
    own = {k: tuple(v.shape) for k, v in unet.state_dict().items() if not k.startswith(("output_blocks.", "out."))}
    cam = {k[len(CAM_PREFIX):]: s for k, s in shapes.items()
           if k.startswith(CAM_PREFIX) and not k.startswith(FRAME_ENCODER_PREFIX)}
    assert cam == own  # what comfy_bridge/svd_patch.build_cam loads into a second UNetModel, strictly
    # the loader's own list of CAM + merger keys is the real file's
    wanted = {k: s for k, s in shapes.items() if k.startswith((CAM_PREFIX, MERGER))}
    assert expected_keys() == set(wanted) and official_shapes() == wanted
    values = sum(torch.Size(s).numel() for s in wanted.values())
    assert abs(values * 2 / 1e9 - 1.48) < 0.01  # the fp16 CAM-only file: about 1.48 GB


def test_the_clip_vision_tower_converts_to_comfyuis_vit_h(shapes):
    import_comfy()
    import comfy.clip_vision
    import comfy.supported_models

    prefix = comfy.supported_models.SVD_img2vid.clip_vision_prefix
    sd = {k: torch.empty(s, device="meta") for k, s in shapes.items() if k.startswith(prefix)}
    converted = comfy.clip_vision.convert_to_transformers(sd, prefix)
    # the key load_clipvision_from_sd reads to pick the ViT-H config (clip_vision_config_h.json): 32 layers
    assert "vision_model.encoder.layers.31.layer_norm1.weight" in converted
    assert "vision_model.encoder.layers.32.layer_norm1.weight" not in converted
    assert tuple(converted["visual_projection.weight"].shape) == (1024, 1280)
    # ...and ComfyUI's own ViT-H image encoder, built from that config on meta, takes exactly those tensors
    import json
    from pathlib import Path

    import comfy.ops

    config = json.loads((Path(comfy.clip_vision.__file__).parent / "clip_vision_config_h.json").read_text())
    model_class = comfy.clip_vision.IMAGE_ENCODERS[config.get("model_type", "clip_vision_model")]
    tower = model_class(config, torch.float32, "meta", comfy.ops.manual_cast)
    own = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in converted.items()}
    assert set(own) - set(given) == set() and set(given) - set(own) <= {"vision_model.embeddings.position_ids"}
    assert all(own[k] == given[k] for k in own)
