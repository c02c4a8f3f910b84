"""MS-Vid2Vid-XL refiner against the official oracle (tests/data/refiner, sliced from oracle/refiner)."""
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from streamingt2v_core.refine import refine_latents
from streamingt2v_core.refiner import (OpenCLIPTextEncoder, RefinerLoadError, build_unet, check_latent_size,
                                       convert_official_unet, infer_unet_config, load_refiner,
                                       official_to_diffusers_key)
from streamingt2v_core.schedules import VPSchedule
from streamingt2v_core.sde import BrownianNoise

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data" / "refiner"
sys.path.insert(0, str(REPO / "tools"))
import make_tiny_refiner  # noqa: E402


@pytest.fixture(scope="module")
def oracle():
    with safe_open(str(DATA / "oracle_slices.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module")
def tiny_official(tmp_path_factory):
    """The tiny refiner in the official ModelScope layout (.pth / .bin / .ckpt), rebuilt from the manifests."""
    folder = make_tiny_refiner.write(tmp_path_factory.mktemp("tiny_v2v"), "official", check=True)
    return load_refiner(folder)


def test_key_mapping_matches_reference_table():
    rows = [line.split("\t") for line in (DATA / "refiner_unet_to_diffusers_keys.tsv").read_text().splitlines()[1:]]
    assert len(rows) == 1480
    for official, o_shape, diffusers_key, d_shape, transform, _ in rows:
        assert official_to_diffusers_key(official) == diffusers_key, official
        assert (transform == "squeeze(-1)") == (json.loads(o_shape) != json.loads(d_shape))


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


def test_schedule_and_steps_match_oracle(oracle):
    sched = VPSchedule()
    plan = sched.trailing_plan(30, t_max=599)
    torch.testing.assert_close(plan.sigmas, oracle["blend/solver/sigmas"], rtol=0, atol=0)
    steps_t = torch.cat([oracle[f"blend/step{i:02d}/t"] for i in range(30)])
    assert torch.equal(plan.timesteps, steps_t)
    a, s = sched.alpha_sigma(torch.tensor([599]))
    assert abs(float(a) - 0.23347324) < 1e-7 and abs(float(s) - 0.97236323) < 1e-7
    assert float(sched.sigmas[-1]) == 1.0  # zero terminal SNR


def test_brownian_tree_regenerates_recorded_increments(oracle):
    sig = oracle["blend/solver/sigmas"]
    x = oracle["blend/in/noised"] * sig[0]
    tree = BrownianNoise(x, sig[sig > 0].min(), sig.max(), seed=0)
    for i in (0, 14, 28):
        torch.testing.assert_close(tree(sig[i], sig[i + 1]), oracle[f"blend/step{i:02d}/bt_noise"], rtol=0, atol=0)


@pytest.mark.parametrize("call", ["callA", "callB"])
def test_predict_x0_matches_oracle(tiny_official, oracle, call):
    p = f"denoise/{call}"
    xt, t = oracle[f"{p}/in/xt"], oracle[f"{p}/in/t"]
    y, y_neg = oracle["denoise/ctx/y"], oracle["denoise/ctx/y_neg"]
    x0 = tiny_official.predict_x0(xt, t, y, y_neg, guidance=7.5, rescale=0.2)
    assert (x0 - oracle[f"{p}/out/x0"]).abs().max() <= 1e-3
    d = tiny_official.denoise(xt, t, y, y_neg)
    assert (d["y_out"] - oracle[f"{p}/out/y_out"]).abs().max() <= 1e-4
    assert (d["u_out"] - oracle[f"{p}/out/u_out"]).abs().max() <= 1e-4
    assert (d["out"] - oracle[f"{p}/out/out_guided"]).abs().max() <= 1e-3


def test_refine_latents_matches_oracle(tiny_official, oracle):
    """30 official steps on 40 frames with the recorded cuts and Brownian increments (about 3 min on 1 CPU)."""
    offsets = torch.stack([oracle[f"blend/step{i:02d}/offsets"] for i in range(30)])
    noise = [oracle[f"blend/step{i:02d}/bt_noise"] for i in range(29)]
    seen = {}
    out = refine_latents(tiny_official, oracle["blend/in/noised"], oracle["denoise/ctx/y"], oracle["denoise/ctx/y_neg"],
                         chunk=24, overlap=8, steps=30, t_start=599, offsets=offsets, brownian_noise=noise,
                         callback=lambda i, n, x0: seen.__setitem__(i, x0))
    assert out.shape == (1, 4, 40, 10, 16)
    assert (out - oracle["blend/out/latents"]).abs().max() <= 5e-3
    for i in range(30):
        assert (seen[i] - oracle[f"blend/step{i:02d}/x0_blended"]).abs().max() <= 5e-3, i


def test_text_encoder_matches_oracle(tmp_path, oracle):
    state = make_tiny_refiner.tiny_component("text_encoder")
    enc = OpenCLIPTextEncoder.from_state_dict(state)
    assert len(enc.transformer.resblocks) == 1  # 2-layer tower, run to its penultimate layer
    ids = OpenCLIPTextEncoder.tokenize(["A cat running on the street, ", ""])
    assert torch.equal(ids[:1], oracle["forward/text/tokens_pos"])
    assert torch.equal(ids[1:], oracle["forward/text/tokens_neg"])
    with torch.no_grad():
        emb = enc(ids)
    assert (emb[:1] - oracle["forward/text/y"]).abs().max() <= 1e-4
    assert (emb[1:] - oracle["forward/text/negative_y"]).abs().max() <= 1e-4


def test_autoencoder_matches_oracle(oracle):
    from streamingt2v_core.refiner import build_autoencoder

    state = make_tiny_refiner.tiny_component("autoencoder")
    state["model.diffusion_model.decoy"] = torch.zeros(1)  # other keys of the SD .ckpt are ignored
    vae = build_autoencoder(state)
    frames = oracle["forward/in/frames_uint8"].permute(0, 3, 1, 2).float()
    with torch.no_grad():
        dist = vae.encode((frames / 255 - 0.5) / 0.5).latent_dist
        decoded = vae.decode(oracle["forward/vae/dec_in"]).sample
    assert (dist.mean - oracle["forward/vae/enc_mean"]).abs().max() <= 1e-3
    assert (dist.std - oracle["forward/vae/enc_std"]).abs().max() <= 1e-3
    assert (decoded - oracle["forward/out/video"][0].permute(1, 0, 2, 3)).abs().max() <= 1e-4


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


def test_misshaped_text_encoder_tensor_is_named():
    state = make_tiny_refiner.tiny_component("text_encoder")
    state["transformer.resblocks.0.mlp.c_fc.weight"] = torch.zeros(4096, 1000)
    with pytest.raises(RefinerLoadError, match=r"(?s)^open_clip_pytorch_model\.bin: 1 tensor.*"
                       r"transformer\.resblocks\.0\.mlp\.c_fc\.weight: expected \[4096, 1024\], found \[4096, 1000\].*Fix: "):
        OpenCLIPTextEncoder.from_state_dict(state, where="open_clip_pytorch_model.bin")


def test_converter_keeps_only_used_tensors(tmp_path, tiny_official, oracle):
    from safetensors import safe_open as open_st

    from streamingt2v_core.refiner import convert_official_folder

    src = make_tiny_refiner.write(tmp_path / "official", "official")
    dst = convert_official_folder(src, tmp_path / "converted", dtype="fp32")
    with open_st(str(dst / "text_encoder.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "transformer.resblocks.1.ln_1.weight" in keys  # the depth stays readable from the keys
    assert not any(k.startswith(("visual.", "text_projection", "logit_scale")) for k in keys)
    conv = load_refiner(dst)
    xt, t = oracle["denoise/callB/in/xt"][:, :, :8], oracle["denoise/callB/in/t"]
    y, y_neg = oracle["denoise/ctx/y"], oracle["denoise/ctx/y_neg"]
    torch.testing.assert_close(conv.predict_x0(xt, t, y, y_neg), tiny_official.predict_x0(xt, t, y, y_neg))
    torch.testing.assert_close(conv.encode_prompt("a cat")[0], tiny_official.encode_prompt("a cat")[0])


def _meta_state(manifest):
    rows = [line.split("\t") for line in (DATA / manifest).read_text().splitlines()[1:]]
    return {r[0]: torch.empty(json.loads(r[1]), device="meta") for r in rows}


def test_real_text_encoder_and_autoencoder_from_shapes():
    """The official open_clip ViT-H-14 file and SD 2.1 .ckpt, as shapes: what we build and use from them."""
    from streamingt2v_core.refiner import build_autoencoder

    with torch.device("meta"):
        enc = OpenCLIPTextEncoder.from_state_dict(_meta_state("refiner_text_encoder_manifest.tsv"))
        vae = build_autoencoder(_meta_state("refiner_autoencoder_manifest.tsv"))
    assert len(enc.transformer.resblocks) == 23 and enc.transformer.resblocks[0].heads == 16  # penultimate of 24
    assert sum(p.numel() for p in enc.parameters()) == 340_387_840  # the text tower's used part (spec §13)
    assert tuple(vae.config.block_out_channels) == (128, 256, 512, 512)
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
