import pytest
import torch
from safetensors.torch import save_file

from streamingt2v_core.common.weights import CheckpointError
from streamingt2v_core.svd import config
from streamingt2v_core.svd.weights import (CONCAT_ENCODER_PREFIX, check_file, concat_encoder_shapes, expected_keys,
                                           file_shapes, official_shapes, read_cam_and_mergers,
                                           write_safetensors_stream)
from tests.support.svd_tiny import sparse_file, tiny_shapes


def test_expected_keys_are_the_reference_manifests_cam_and_merger_rows():
    """The loader's key set is the real model.safetensors' controlnet.* + merger rows (800), at the real sizes."""
    shapes = official_shapes()
    cam = [k for k in shapes if k.startswith("controlnet.")]
    merger = [k for k in shapes if "cross_attention_merger_" in k]
    assert len(cam) == config.CAM_KEYS and len(merger) == config.MERGER_KEYS and len(shapes) == 800
    n_cam = sum(torch.Size(shapes[k]).numel() for k in cam)
    n_merger = sum(torch.Size(shapes[k]).numel() for k in merger)
    assert (n_cam, n_merger) == (config.CAM_VALUES, config.MERGER_VALUES)
    assert 2 * (n_cam + n_merger) == pytest.approx(1.48e9, rel=0.01)  # the CAM file in fp16
    # the oracle's tiny checkpoint has the same names (other sizes)
    assert {k for k in tiny_shapes() if k.startswith("controlnet.") or "cross_attention_merger_" in k} == expected_keys()


def test_the_concat_encoder_is_the_real_files_conditioner_encoder():
    """108 keys: the conditioner's VAE encoder and quant_conv (not its decoder), 34.2 M values; the tiny
    checkpoint has the same names."""
    shapes = concat_encoder_shapes()
    assert len(shapes) == 108 and all(k.startswith(CONCAT_ENCODER_PREFIX) for k in shapes)
    assert not any(".decoder." in k or "post_quant" in k for k in shapes)
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 34_163_592 + 72
    assert set(tiny_shapes((CONCAT_ENCODER_PREFIX + "encoder.", CONCAT_ENCODER_PREFIX + "quant_conv."))) == set(shapes)


def test_real_layout_passes_the_header_check(tmp_path):
    path = sparse_file(tmp_path / "model.safetensors", file_shapes())  # 1.55 GB, sparse: no disk
    shapes = check_file(path)
    assert shapes == file_shapes()


def test_tiny_layout_with_base_passes(tmp_path):
    path = sparse_file(tmp_path / "model.safetensors", tiny_shapes())
    assert len(check_file(path)) == 800 + 108


def test_a_cam_file_without_the_conditioner_encoder_is_refused(tmp_path):
    path = sparse_file(tmp_path / "cam.safetensors", official_shapes())
    with pytest.raises(CheckpointError, match=r"conditioner's VAE encoder.*missing: 108 of 108.*older converter"):
        check_file(path)


def test_plain_svd_checkpoint_is_named(tmp_path):
    shapes = {k: s for k, s in tiny_shapes().items() if not k.startswith("controlnet.") and "merger" not in k}
    shapes["conditioner.embedders.0.open_clip.model.visual.proj"] = (64, 128)
    path = sparse_file(tmp_path / "svd_xt.safetensors", shapes)
    with pytest.raises(CheckpointError, match="plain SVD checkpoint: it has no CAM.*StreamingSVD model.safetensors"):
        check_file(path)


def test_streamingt2v_ckpt_is_named(tmp_path):
    path = tmp_path / "streaming_t2v.ckpt"
    torch.save({"state_dict": {"unet.conv_in.weight": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="torch.save checkpoint.*StreamingT2V"):
        read_cam_and_mergers(path)
    save_file({"base_model.conv_in.weight": torch.zeros(2)}, str(tmp_path / "t2v.safetensors"))
    with pytest.raises(CheckpointError, match="StreamingT2V"):
        check_file(tmp_path / "t2v.safetensors")


def test_truncated_file(tmp_path):
    path = sparse_file(tmp_path / "model.safetensors", tiny_shapes(), cut=100)
    with pytest.raises(CheckpointError, match="truncated"):
        check_file(path)
    (tmp_path / "short.safetensors").write_bytes((10_000).to_bytes(8, "little") + b"{")
    with pytest.raises(CheckpointError, match="truncated"):
        check_file(tmp_path / "short.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        check_file(tmp_path / "empty.safetensors")


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    shapes = tiny_shapes()
    del shapes["controlnet.controlnet_cond_embedding.norms.2.bias"]
    shapes["controlnet.extra.weight"] = (3,)
    with pytest.raises(CheckpointError) as err:
        check_file(sparse_file(tmp_path / "m.safetensors", shapes))
    assert "norms.2.bias" in str(err.value) and "controlnet.extra.weight" in str(err.value)
    assert "1 missing, 1 unexpected" in str(err.value)


@pytest.mark.parametrize("key,shape", [
    ("controlnet.input_blocks.4.0.in_layers.2.weight", (640, 320, 3, 1)),  # against the base UNet's twin
    ("controlnet.controlnet_cond_embedding.blocks.3.weight", (24, 17, 3, 3)),  # the frame encoder itself
    ("model.diffusion_model.cross_attention_merger_input_blocks.5.temporal_transformer.proj_in.weight", (640, 320)),
    ("model.diffusion_model.cross_attention_merger_mid_block.temporal_transformer.norm.weight", (640,)),
])
def test_mis_shaped_tensor_is_named(tmp_path, key, shape):
    shapes = tiny_shapes()
    shapes[key] = shape
    with pytest.raises(CheckpointError, match="wrong shape") as err:
        check_file(sparse_file(tmp_path / "m.safetensors", shapes))
    assert key in str(err.value)


def test_mis_shaped_cam_in_a_real_cam_only_file(tmp_path):
    shapes = dict(file_shapes())
    shapes["controlnet.middle_block.1.proj_in.weight"] = (1280, 1024)
    with pytest.raises(CheckpointError, match="official layout") as err:
        check_file(sparse_file(tmp_path / "cam.safetensors", shapes))
    assert "controlnet.middle_block.1.proj_in.weight" in str(err.value)


def test_integer_tensor_is_refused(tmp_path):
    shapes = tiny_shapes()
    key = "controlnet.controlnet_cond_embedding.conv_in.bias"
    with pytest.raises(CheckpointError, match="not floating point"):
        check_file(sparse_file(tmp_path / "m.safetensors", shapes, dtypes={key: "I8"}))


def test_stream_writer_round_trip(tmp_path):
    from safetensors import safe_open

    tensors = {"b": torch.arange(6.0).view(2, 3), "a": torch.ones(4)}
    specs = [(k, list(v.shape), torch.float16) for k, v in sorted(tensors.items())]
    write_safetensors_stream(tmp_path / "x.safetensors", specs, (tensors[k] for k, _, _ in specs), {"format": "pt"})
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert torch.equal(f.get_tensor("b"), tensors["b"].half())
