"""load_streamingt2v on every source kind, and on wrong files; real-size shapes on the meta device."""
import resource

import pytest
import torch
from safetensors.torch import load_file, save_file

import streamingt2v_core as st
from streamingt2v_core.common.weights import CheckpointError

from tests.support.paths import DATA, ORACLE
from tests.support.t2v_probe import probe as _probe


def read_manifest(path):
    out = {}
    with open(path) as f:
        next(f)
        for line in f:
            key, shape, _, _ = line.rstrip("\n").split("\t")
            out[key] = tuple(int(x) for x in shape.strip("[]").split(",") if x.strip())
    return out


def test_official_shapes_equal_manifest_without_allocating():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    shapes = st.official_state_dict_shapes()
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    manifest = read_manifest(DATA / "streaming_t2v_manifest.tsv")
    assert len(manifest) == 3407
    assert shapes == manifest
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 3_232_602_140
    assert grown_mb < 1000, f"building on meta grew RSS by {grown_mb:.0f} MB"  # real weights: 12.9 GB


def test_tiny_shapes_equal_tiny_manifest():
    assert st.official_state_dict_shapes(ORACLE / "tiny_config.json") == read_manifest(ORACLE / "tiny_manifest.tsv")


def same_model(a, b):
    """Identical weights and (to kernel noise) identical predictions."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (_probe(a) - _probe(b)).abs().max() <= 1e-5
    return True


@pytest.fixture(scope="module")
def tiny_state(tiny_ckpt):
    return load_file(str(tiny_ckpt))


def test_lightning_ckpt_loads_like_safetensors(tmp_path, tiny_model, tiny_state):
    path = tmp_path / "streaming_t2v.ckpt"
    torch.save({"epoch": 3, "global_step": 1200, "pytorch-lightning_version": "2.2.1", "state_dict": tiny_state,
                "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(10)}}}]}, path)
    model = st.load_streamingt2v(str(path), config=ORACLE / "tiny_config.json")
    assert same_model(model, tiny_model)


def test_state_dict_source_and_bf16(tiny_model, tiny_state):
    model = st.load_streamingt2v(tiny_state, config=ORACLE / "tiny_config.json", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    ref = _probe(tiny_model)
    err = ((_probe(model).float() - ref).norm() / ref.norm()).item()
    assert 0 < err < 0.05  # bf16 is not bit-identical, but close


def test_converted_folder_loads(tmp_path, tiny_ckpt, tiny_model):
    from streamingt2v_core.t2v.convert import convert

    out = tmp_path / "converted"
    convert(tiny_ckpt, out, dtype="fp32")
    model = st.load_streamingt2v(str(out))  # the sidecar config travels into config.json
    assert same_model(model, tiny_model)


def test_mis_shaped_tensor_is_listed(tmp_path, tiny_state):
    bad = dict(tiny_state)
    key = "base_model.cross_attention_merger_mid_block.temporal_transformer.proj_in.weight"
    bad[key] = torch.zeros(192, 191)
    path = tmp_path / "bad.safetensors"
    save_file(bad, str(path))
    with pytest.raises(CheckpointError) as e:
        st.load_streamingt2v(str(path), config=ORACLE / "tiny_config.json")
    assert key in str(e.value) and "bad.safetensors" in str(e.value)


def test_missing_component_is_listed(tmp_path, tiny_state):
    part = {k: v for k, v in tiny_state.items() if not k.startswith("vae.")}
    with pytest.raises(CheckpointError) as e:
        st.load_streamingt2v(part, config=ORACLE / "tiny_config.json")
    msg = str(e.value)
    assert "missing" in msg and "vae.decoder.conv_in.weight" in msg


def test_plain_diffusers_unet_is_refused(tmp_path):
    from diffusers import UNet3DConditionModel

    unet = UNet3DConditionModel(block_out_channels=(32, 32, 32, 32), cross_attention_dim=32, attention_head_dim=4,
                                norm_num_groups=8, layers_per_block=1)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file(unet.state_dict(), str(path))
    with pytest.raises(CheckpointError) as e:
        st.load_streamingt2v(str(path))
    msg = str(e.value)
    assert "diffusion_pytorch_model.safetensors" in msg and "not streaming_t2v.ckpt" in msg


def test_truncated_file_is_refused(tmp_path, tiny_ckpt):
    data = tiny_ckpt.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError) as e:
        st.load_streamingt2v(str(path))
    assert "cut.safetensors" in str(e.value)


def test_ckpt_without_state_dict_is_refused(tmp_path):
    path = tmp_path / "no_state.ckpt"
    torch.save({"epoch": 1, "optimizer_states": []}, path)
    with pytest.raises(CheckpointError) as e:
        st.load_streamingt2v(str(path))
    assert "no_state.ckpt" in str(e.value) and "state_dict" in str(e.value)


# -- input checks of the model's public calls -------------------------------------------------------------

def _denoiser_inputs(batch=2):
    """Valid predict_noise inputs of the tiny model: 16 latent frames of 8x8, 8 conditioning frames of 64x64."""
    g = torch.Generator().manual_seed(3)
    sample = torch.randn(batch, 4, 16, 8, 8, generator=g)
    ehs = torch.randn(batch, 93, 1024, generator=g)
    cond = torch.rand(batch, 8, 3, 64, 64, generator=g) * 2 - 1
    return sample, torch.tensor(301), ehs, cond


def test_one_video_of_conditioning_frames_broadcasts_over_the_guidance_rows(tiny_model):
    """Issue 11's fourth case: conditioning frames of one video (batch 1) with a guidance batch of 2 rows
    must give exactly what the frames repeated to both rows give (the CAM used to split the 8 frames
    into 4 per row); the same for the CAM features, the context and the timestep."""
    sample, t, ehs, cond = _denoiser_inputs()
    one = cond[:1]
    ref = tiny_model.predict_noise(sample, t, ehs, one.repeat(2, 1, 1, 1, 1))
    assert torch.equal(tiny_model.predict_noise(sample, t, ehs, one), ref)
    emb = tiny_model.encode_cond_frames(one)
    assert emb.shape[0] == 8
    assert torch.equal(tiny_model.predict_noise(sample, t, ehs, None, emb),
                       tiny_model.predict_noise(sample, t, ehs, None, emb.repeat(2, 1, 1, 1)))
    assert torch.equal(tiny_model.predict_noise(sample, t, ehs[:1], cond),
                       tiny_model.predict_noise(sample, t, ehs[:1].repeat(2, 1, 1), cond))
    assert torch.equal(tiny_model.predict_noise(sample, torch.tensor([301, 301]), ehs, cond),
                       tiny_model.predict_noise(sample, t, ehs, cond))


def _with(**changes):
    """A change to valid inputs: each value replaces that argument (a callable maps the old value)."""
    def change(args):
        args = dict(args)
        for name, value in changes.items():
            args[name] = value(args[name]) if callable(value) else value
        return args
    return change


# (case id, change to valid batch-2 inputs, what the message must hold)
BAD_DENOISER_INPUTS = [
    ("cond_frames batch 3 of 2", _with(cond_frames=lambda c: torch.cat([c, c[:1]])), r"cond_frames.*batch 3.*2"),
    ("context batch 3 of 2", _with(encoder_hidden_states=lambda e: torch.cat([e, e[:1]])),
     r"encoder_hidden_states.*batch 3.*2"),
    ("timestep of 3 rows", _with(timestep=torch.tensor([1, 2, 3])), r"timestep.*\(3,\)"),
    ("cond_embedding of 3 videos", _with(cond_frames=None, cond_embedding=torch.zeros(24, 64, 8, 8)),
     r"cond_embedding.*24 rows"),
    ("cond_embedding channels", _with(cond_frames=None, cond_embedding=torch.zeros(16, 32, 8, 8)),
     r"cond_embedding.*\(16, 32, 8, 8\).*64"),
    ("cond_embedding size", _with(cond_frames=None, cond_embedding=torch.zeros(16, 64, 4, 4)),
     r"cond_embedding.*\(16, 64, 4, 4\).*8x8"),
    ("no conditioning", _with(cond_frames=None), r"cond_frames or cond_embedding"),
    ("sample of 12 frames", _with(sample=lambda s: s[:, :, :12]), r"sample.*12 frames.*16"),
    ("sample of 3 channels", _with(sample=lambda s: s[:, :3]), r"sample.*3 channels.*4"),
    ("sample 4-D", _with(sample=lambda s: s[:, :, 0]), r"sample.*\(B, 4, 16, h, w\)"),
    ("sample integer", _with(sample=lambda s: s.long()), r"sample.*torch.int64"),
    ("context without APM tokens", _with(encoder_hidden_states=lambda e: e[:, :77]),
     r"encoder_hidden_states.*77 tokens.*93"),
    ("context width", _with(encoder_hidden_states=lambda e: e[..., :512]), r"encoder_hidden_states.*512.*1024"),
    ("4 conditioning frames", _with(cond_frames=lambda c: c[:, :4]), r"cond_frames.*4 frames.*8"),
    ("cond frames too small", _with(cond_frames=lambda c: c[..., :32, :32]), r"cond_frames.*32x32.*64x64"),
    ("cond frames channels last", _with(cond_frames=lambda c: c.permute(0, 1, 3, 4, 2)),
     r"cond_frames.*\(2, 8, 64, 64, 3\).*permute"),
    ("cond frames uint8", _with(cond_frames=lambda c: ((c + 1) * 127.5).to(torch.uint8)), r"cond_frames.*uint8"),
    ("cond frames 0..255", _with(cond_frames=lambda c: (c + 1) * 127.5), r"cond_frames.*\[-1, 1\]"),
]


@pytest.mark.parametrize("change, message", [c[1:] for c in BAD_DENOISER_INPUTS], ids=[c[0] for c in BAD_DENOISER_INPUTS])
def test_predict_noise_refuses_inconsistent_inputs(tiny_model, monkeypatch, change, message):
    """Every mismatch is a ValueError naming the argument, what it got and what is expected, before the
    CAM runs."""
    monkeypatch.setattr(tiny_model.unet, "forward", lambda *a, **k: pytest.fail("the CAM ran before the check"))
    sample, t, ehs, cond = _denoiser_inputs()
    args = change(dict(sample=sample, timestep=t, encoder_hidden_states=ehs, cond_frames=cond, cond_embedding=None))
    with pytest.raises(ValueError, match=message):
        tiny_model.predict_noise(**args)


def test_encode_calls_refuse_wrong_layouts_and_ranges(tiny_model):
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    with pytest.raises(ValueError, match=r"image.*\(1, 64, 64, 3\).*permute\(0, 3, 1, 2\)"):
        tiny_model.encode_anchor(image.permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match=r"image.*torch.uint8"):
        tiny_model.encode_anchor(((image + 1) * 127.5).to(torch.uint8))
    with pytest.raises(ValueError, match=r"image.*\[-1, 1\]"):
        tiny_model.encode_anchor((image + 1) * 127.5)
    with pytest.raises(ValueError, match=r"image.*\(B, 3, H, W\)"):
        tiny_model.encode_anchor(image[0])
    frames = torch.rand(1, 8, 3, 64, 64) * 2 - 1
    with pytest.raises(ValueError, match=r"cond_frames.*4 frames.*8"):
        tiny_model.encode_cond_frames(frames[:, :4])
    with pytest.raises(ValueError, match=r"cond_frames.*\[-1, 1\]"):
        tiny_model.encode_cond_frames((frames + 1) / 2 * 255)
    with pytest.raises(ValueError, match=r"cond_frames.*64x60.*multiples of 8"):
        tiny_model.encode_cond_frames(frames[..., :60, :])
    ids = tiny_model.tokenize(["a cat"])
    with pytest.raises(ValueError, match=r"input_ids.*torch.float32.*tokenize"):
        tiny_model.encode_text(ids.float())
    with pytest.raises(ValueError, match=r"input_ids.*\(B, 77\).*\(77,\)"):
        tiny_model.encode_text(ids[0])
    with pytest.raises(ValueError, match=r"input_ids.*78 tokens.*77"):
        tiny_model.encode_text(torch.cat([ids, ids[:, :1]], dim=1))


def test_decode_latents_refuses_wrong_layouts(tiny_model):
    z = torch.randn(1, 4, 2, 8, 8)
    with pytest.raises(ValueError, match=r"latents.*\(1, 2, 4, 8, 8\).*4 channels"):
        tiny_model.decode_latents(z.permute(0, 2, 1, 3, 4))
    with pytest.raises(ValueError, match=r"latents.*torch.int64"):
        tiny_model.decode_latents(z.long())
    with pytest.raises(ValueError, match=r"slice_frames.*0"):
        tiny_model.decode_latents(z, slice_frames=0)


@pytest.mark.parametrize("key, shape", [
    ("base_model.conv_in.weight", (1,)),  # the example
    ("base_model.down_blocks.0.resnets.0.conv2.weight", ()),  # a 1-element 0-d tensor: IndexError before
    ("image_encoder.model.visual.conv1.weight", (1,)),  # IndexError before
    ("text_encoder.text_model.embeddings.token_embedding.weight", (1,)),  # ValueError (unpacking) before
    ("text_encoder.text_model.embeddings.token_embedding.weight", (1, 1)),  # transformers' config error before
    ("image_encoder.model.token_embedding.weight", (2, 2)),  # named among dependants only, before
])
def test_odd_shaped_key_of_shape_inference_is_named(tmp_path, tiny_state, key, shape):
    """A 1-element or re-shaped tensor among the keys the architecture is read from: CheckpointError naming the
    file and that key, not an IndexError or a diffusers/transformers argument error."""
    path = tmp_path / "odd.safetensors"
    save_file(dict(tiny_state, **{key: torch.ones(shape)}), str(path))
    with pytest.raises(CheckpointError) as e:
        st.load_streamingt2v(str(path), config=ORACLE / "tiny_config.json")
    msg = str(e.value)
    assert str(path) in msg and key in msg and "Fix" in msg, msg


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.float8_e4m3fn])
def test_integer_bool_and_fp8_weights_are_named(tmp_path, tiny_state, dtype):
    """Before: int8 in a float weight raised torch's bare RuntimeError from load_state_dict (no file, no key);
    fp8 loaded silently as if it were the model. Now each is refused naming the file, key and dtype."""
    key = "base_model.conv_in.weight"
    path = tmp_path / "quantised.safetensors"
    t = tiny_state[key]
    save_file(dict(tiny_state, **{key: (t > 0) if dtype == torch.bool else (t * 8).to(dtype)}), str(path))
    with pytest.raises(CheckpointError) as e:
        st.load_streamingt2v(str(path), config=ORACLE / "tiny_config.json")
    msg = str(e.value)
    assert str(path) in msg and f"{key}: found {str(dtype).replace('torch.', '')}" in msg, msg
    assert "unquantised" in msg


def test_half_precision_file_loads_the_same_weights(tmp_path, tiny_state):
    path = tmp_path / "fp16.safetensors"
    save_file({k: v.half() for k, v in tiny_state.items()}, str(path))
    model = st.load_streamingt2v(str(path), config=ORACLE / "tiny_config.json")
    sd = model.state_dict()
    assert all(sd[k].dtype == torch.float32 and torch.equal(sd[k], v.half().float()) for k, v in tiny_state.items())


def test_bad_sidecar_config_is_named(tmp_path, tiny_ckpt):
    path = tmp_path / "streaming_t2v.safetensors"
    path.symlink_to(tiny_ckpt)
    path.with_suffix(".json").write_text('{"unet_config": [1, 2]}')  # before: AttributeError
    with pytest.raises(CheckpointError) as e:
        st.load_streamingt2v(str(path))
    assert str(path.with_suffix(".json")) in str(e.value) and "Fix" in str(e.value)
