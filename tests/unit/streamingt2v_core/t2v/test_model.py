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
