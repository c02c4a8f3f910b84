"""Loading MS-Vid2Vid-XL: official, converted and single-file sources; errors that name the file and the fix."""
import json

import pytest
import torch

from streamingt2v_core.enhancers.load import RefinerLoadError, load_refiner
from streamingt2v_core.enhancers.ms_vid2vid.text import OpenCLIPTextEncoder
from tests.support.paths import REFINER_DATA as DATA
from tools import make_tiny_refiner


def test_converted_folder_loads_like_the_official_files(tmp_path, tiny_official, oracle):
    folder = make_tiny_refiner.write(tmp_path / "converted", "converted")
    conv = load_refiner(folder)
    xt, t = oracle["denoise/callA/in/xt"][:, :, :8], oracle["denoise/callA/in/t"]
    y, y_neg = oracle["denoise/ctx/y"], oracle["denoise/ctx/y_neg"]
    torch.testing.assert_close(conv.predict_x0(xt, t, y, y_neg), tiny_official.predict_x0(xt, t, y, y_neg))
    assert conv.text_encoder is not None and conv.vae is not None


def test_load_errors_name_the_fix(tmp_path):
    with pytest.raises(RefinerLoadError, match="non_ema_0035000.pth"):
        load_refiner(tmp_path)
    bad = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    save_file({"input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3), "out.2.weight": torch.zeros(4, 32, 3, 3),
               "input_blocks.1.0.bogus.weight": torch.zeros(1)}, str(bad))
    with pytest.raises(RefinerLoadError, match="incomplete"):
        load_refiner(bad)


@pytest.mark.parametrize("fmt, component, bad, expected", [
    # official layout: the key as the .pth names it; a temporal proj (Conv1d k=1 there) keeps its trailing 1
    ("official", "unet", {"input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": (33, 32),
                          "input_blocks.1.2.proj_in.weight": (32, 31, 1)},
     ["input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight: expected [32, 32], found [33, 32]",
      "input_blocks.1.2.proj_in.weight: expected [32, 32, 1], found [32, 31, 1]"]),
    ("converted", "unet", {"output_blocks.3.0.out_layers.3.weight": (128, 128, 3, 2)},
     ["output_blocks.3.0.out_layers.3.weight: expected [128, 128, 3, 3], found [128, 128, 3, 2]"]),
    ("converted", "autoencoder", {"first_stage_model.decoder.conv_out.weight": (3, 32, 1, 1)},
     ["decoder.conv_out.weight: expected [3, 32, 3, 3], found [3, 32, 1, 1]"]),
], ids=["official_unet", "converted_unet", "autoencoder"])
def test_misshaped_tensor_names_file_key_shapes_and_fix(tmp_path, fmt, component, bad, expected):
    """A tensor of the wrong shape is refused with the file, each key with expected vs found shape, and the fix,
    not torch's bare RuntimeError from load_state_dict."""
    from safetensors.torch import load_file, save_file

    components = ("unet",) if component == "unet" else ("unet", component)
    folder = make_tiny_refiner.write(tmp_path / "tiny", fmt, components=components)
    name = (make_tiny_refiner.OFFICIAL_FILES if fmt == "official" else make_tiny_refiner.CONVERTED_FILES)[component]
    path = folder / name
    state = load_file(str(path)) if fmt == "converted" else torch.load(path, weights_only=True)
    for key, shape in bad.items():
        assert key in state and tuple(state[key].shape) != shape, key
        state[key] = torch.zeros(shape)
    save_file(state, str(path)) if fmt == "converted" else torch.save(state, path)
    with pytest.raises(RefinerLoadError) as err:
        load_refiner(folder)
    msg = str(err.value)
    assert msg.startswith(f"{path}: {len(bad)} tensor(s) have the wrong shape"), msg
    for line in expected:
        assert line in msg, msg
    assert "Fix: " in msg and "download it again" in msg


def test_hostile_single_ckpt_is_refused_naming_the_file(tmp_path):
    """Before: a single .ckpt whose pickle carries code beside a few UNet tensors was refused, but as 'the
    refiner UNet weights are incomplete', naming no file. The code never runs either way."""
    import os

    marker = tmp_path / "pwned"

    class Hostile:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    unet = make_tiny_refiner.tiny_component("unet")
    path = tmp_path / "refiner.ckpt"
    torch.save({"state_dict": {k: unet[k] for k in ("input_blocks.0.0.weight", "out.2.weight")},
                "loops": [[Hostile()]], "hyper_parameters": Hostile()}, path)
    with pytest.raises(RefinerLoadError) as err:
        load_refiner(path)
    assert str(err.value).startswith(f"{path}: ") and "non_ema_0035000.pth" in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("component, key", [("unet", "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"),
                                            ("autoencoder", "first_stage_model.decoder.conv_in.weight")])
def test_integer_weight_is_refused_not_copied(tmp_path, component, key):
    """Before: load_state_dict copied an int8 tensor into the float weight without a word."""
    from safetensors.torch import load_file, save_file

    folder = make_tiny_refiner.write(tmp_path / "tiny", "converted", components=("unet", component))
    path = folder / make_tiny_refiner.CONVERTED_FILES[component]
    state = load_file(str(path))
    state[key] = (state[key] * 8).to(torch.int8)
    save_file(state, str(path))
    with pytest.raises(RefinerLoadError) as err:
        load_refiner(folder)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and f"{key}: found int8" in msg, msg


@pytest.mark.parametrize("key, shape", [("input_blocks.0.0.weight", (1,)),
                                        ("input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", ()),
                                        ("input_blocks.1.0.out_layers.3.weight", (1, 1, 1, 1))])
def test_odd_shaped_key_of_shape_inference_is_named(tmp_path, key, shape):
    """Before: 'incomplete or not a 3-D UNet (no in_channels)' naming neither file nor key, or a diffusers
    GroupNorm ValueError."""
    from safetensors.torch import load_file, save_file

    folder = make_tiny_refiner.write(tmp_path / "tiny", "converted", components=("unet",))
    path = folder / "unet.safetensors"
    save_file(dict(load_file(str(path)), **{key: torch.ones(shape)}), str(path))
    with pytest.raises(RefinerLoadError) as err:
        load_refiner(folder)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and key in msg, msg


def _meta_state(manifest):
    rows = [line.split("\t") for line in (DATA / manifest).read_text().splitlines()[1:]]
    return {r[0]: torch.empty(json.loads(r[1]), device="meta") for r in rows}


def test_real_text_encoder_and_autoencoder_from_shapes():
    """The official open_clip ViT-H-14 file and SD 2.1 .ckpt, as shapes: what we build and use from them."""
    from streamingt2v_core.enhancers.ms_vid2vid.vae import build_autoencoder

    with torch.device("meta"):
        enc = OpenCLIPTextEncoder.from_state_dict(_meta_state("refiner_text_encoder_manifest.tsv"))
        vae = build_autoencoder(_meta_state("refiner_autoencoder_manifest.tsv"))
    assert len(enc.transformer.resblocks) == 23 and enc.transformer.resblocks[0].heads == 16  # penultimate of 24
    assert sum(p.numel() for p in enc.parameters()) == 340_387_840  # the text tower's used part (spec §13)
    assert tuple(vae.config.block_out_channels) == (128, 256, 512, 512)
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
