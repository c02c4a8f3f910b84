"""The per-component converter (streamingt2v_core.t2v.convert, run as `python -m streamingt2v_core.convert`)."""
from __future__ import annotations

import collections
import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from streamingt2v_core.t2v import convert as convert_mod
from streamingt2v_core.common.weights import CheckpointError
from streamingt2v_core.t2v.weights import read_state_dict, read_state_dict_with_meta
from streamingt2v_core.t2v.convert import convert, main

from tests.support.paths import ROOT

COMPONENT_FILES = ["base_model.safetensors", "image_encoder.safetensors", "resampler.safetensors",
                   "text_encoder.safetensors", "unet.safetensors", "vae.safetensors"]
POSITION_IDS = "text_encoder.text_model.embeddings.position_ids"


class LightningExtra:
    """Stands for the callback/hyper-parameter objects a Lightning checkpoint carries."""

    def __init__(self, value):
        self.value = value


def synthetic_state() -> collections.OrderedDict:
    g = torch.Generator().manual_seed(1)
    return collections.OrderedDict(
        [
            ("base_model.conv_in.weight", torch.randn(8, 4, 3, 3, generator=g)),
            ("base_model.down_blocks.0.attentions.0.transformer_blocks.0.attn2.alpha", torch.tensor(0.3)),
            ("base_model.cross_attention_merger_down_blocks.0.temporal_transformer.proj_in.weight",
             torch.randn(6, 6, generator=g)),
            ("unet.controlnet_cond_embedding.conv_in.weight", torch.randn(4, 3, 3, 3, generator=g)),
            ("unet.counter", torch.tensor([3, 4], dtype=torch.int64)),  # a non-float tensor is kept as is
            ("resampler.context_embedding.2.bias", torch.randn(16, generator=g)),
            ("image_encoder.model.visual.conv1.weight", torch.randn(4, 3, 2, 2, generator=g)),
            ("image_encoder.model.logit_scale", torch.tensor(4.6052)),
            ("text_encoder.text_model.embeddings.token_embedding.weight", torch.randn(10, 8, generator=g)),
            (POSITION_IDS, torch.arange(77).unsqueeze(0)),
            ("vae.encoder.conv_in.weight", torch.randn(4, 3, 3, 3, generator=g) * 1e-3),
        ]
    )


def write_ckpt(folder: Path, state=None, name="streaming_t2v.ckpt", config=None) -> Path:
    state = synthetic_state() if state is None else state
    path = folder / name
    torch.save({"epoch": 3, "state_dict": state, "callbacks": {"cb": LightningExtra(1)},
                "optimizer_states": [{"state": {0: {"exp_avg": torch.randn(100)}}}],
                "hyper_parameters": collections.OrderedDict(extra=LightningExtra(2))}, path)
    if config is not None:
        path.with_suffix(".json").write_text(json.dumps(config))
    return path


def test_roundtrip_fp32_with_sidecar_config(tmp_path):
    config = {"unet_config": {"block_out_channels": [64, 128, 192, 192]}, "official_commit": "abc"}
    src = write_ckpt(tmp_path, config=config)
    out = tmp_path / "converted"
    logged = []

    summary = convert(src, out, dtype="fp32", log=logged.append)

    assert sorted(p.name for p in out.iterdir()) == sorted(COMPONENT_FILES + ["config.json"])
    expected = {k: v for k, v in synthetic_state().items() if k != POSITION_IDS}
    state, meta = read_state_dict_with_meta(out)
    assert sorted(state) == sorted(expected)
    for k, v in expected.items():
        assert state[k].dtype == v.dtype and torch.equal(state[k], v), k
    assert meta["format"] == "folder" and meta["config"] == config
    saved = json.loads((out / "config.json").read_text())
    assert saved == {**config, "format": "streamingt2v-components", "dtype": "fp32", "source": "streaming_t2v.ckpt"}
    # each file holds its keys without the prefix
    with safe_open(str(out / "image_encoder.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["model.logit_scale", "model.visual.conv1.weight"]
        assert f.metadata()["streamingt2v_component"] == "image_encoder"
    assert summary["components"]["base_model"]["tensors"] == 3
    assert summary["components"]["text_encoder"]["params"] == 80
    assert summary["bytes"] == sum((out / n).stat().st_size for n in COMPONENT_FILES)
    assert any("unet.safetensors" in line for line in logged) and "total" in logged[-1]


@pytest.mark.parametrize("name, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_dtype_applies_to_floats_only(tmp_path, name, dtype):
    src = write_ckpt(tmp_path)
    out = tmp_path / name
    convert(src, out, dtype=name, log=lambda s: None)
    state = read_state_dict(out)
    for k, v in synthetic_state().items():
        if k == POSITION_IDS:
            assert k not in state
        elif v.is_floating_point():
            assert state[k].dtype == dtype and torch.equal(state[k], v.to(dtype)), k
        else:
            assert state[k].dtype == v.dtype and torch.equal(state[k], v), k
    assert json.loads((out / "config.json").read_text())["dtype"] == name
    assert read_state_dict_with_meta(out)[1]["config"] is None  # no sidecar: only converter bookkeeping


def test_safetensors_source_and_folder_source(tmp_path):
    from safetensors.torch import save_file

    flat = tmp_path / "flat.safetensors"
    save_file(dict(synthetic_state()), flat)
    convert(flat, tmp_path / "a", dtype="fp16", log=lambda s: None)
    convert(tmp_path / "a", tmp_path / "b", dtype="fp32", log=lambda s: None)
    a, b = read_state_dict(tmp_path / "a"), read_state_dict(tmp_path / "b")
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k].float() if a[k].is_floating_point() else a[k], b[k]), k
    assert b["vae.encoder.conv_in.weight"].dtype == torch.float32


class _Boom(RuntimeError):
    pass


def failing_writer(fail_on: str):
    real = convert_mod.write_safetensors

    def writer(f, tensors, dtype, metadata=None):
        if metadata["streamingt2v_component"] == fail_on:
            f.write(b"partial bytes")
            raise _Boom(fail_on)
        return real(f, tensors, dtype, metadata)

    return writer


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    src = write_ckpt(tmp_path)
    out = tmp_path / "new" / "out"
    monkeypatch.setattr(convert_mod, "write_safetensors", failing_writer("text_encoder"))
    with pytest.raises(_Boom):
        convert(src, out, log=lambda s: None)
    assert not out.exists()  # created by the converter, so removed again
    assert (tmp_path / "new").is_dir() and not any((tmp_path / "new").iterdir())


def test_failure_with_force_keeps_the_previous_conversion(tmp_path, monkeypatch):
    src = write_ckpt(tmp_path)
    out = tmp_path / "out"
    convert(src, out, dtype="fp32", log=lambda s: None)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(convert_mod, "write_safetensors", failing_writer("vae"))
    with pytest.raises(_Boom):
        convert(src, out, dtype="fp16", force=True, log=lambda s: None)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_refuses_non_empty_out_dir_unless_forced_and_drops_stale_components(tmp_path):
    src = write_ckpt(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not empty.*--force"):
        convert(src, out, log=lambda s: None)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]

    (out / "unet.safetensors").write_bytes(b"old")
    state = synthetic_state()
    del state["unet.controlnet_cond_embedding.conv_in.weight"], state["unet.counter"]
    src2 = write_ckpt(tmp_path, state=state, name="no_cam.ckpt")
    summary = convert(src2, out, force=True, log=lambda s: None)
    assert "unet" not in summary["components"]
    assert not (out / "unet.safetensors").exists()  # stale: would be mixed into the new conversion
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_symlinked_component_is_replaced_not_followed(tmp_path):
    src = write_ckpt(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out / "vae.safetensors").symlink_to(victim)
    (out / "config.json").symlink_to(victim)
    convert(src, out, force=True, log=lambda s: None)
    assert victim.read_text() == "precious"
    assert not (out / "vae.safetensors").is_symlink() and not (out / "config.json").is_symlink()
    assert "vae.encoder.conv_in.weight" in read_state_dict(out)


def test_foreign_keys_are_refused_before_writing(tmp_path):
    unet3d = {"conv_in.weight": torch.zeros(2), "down_blocks.0.resnets.0.conv1.weight": torch.zeros(2),
              "transformer_in.proj_in.weight": torch.zeros(2)}
    src = tmp_path / "diffusion_pytorch_model.ckpt"
    torch.save({"state_dict": unet3d}, src)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError) as err:
        convert(src, out, log=lambda s: None)
    msg = str(err.value)
    assert str(src) in msg and "UNet3DConditionModel" in msg and "3 keys belong to none" in msg
    assert not out.exists()


def test_bad_arguments(tmp_path):
    src = write_ckpt(tmp_path)
    with pytest.raises(CheckpointError, match="fp8"):
        convert(src, tmp_path / "o", dtype="fp8")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a folder"):
        convert(src, tmp_path / "file")
    convert(src, tmp_path / "o", log=lambda s: None)
    with pytest.raises(CheckpointError, match="source folder"):
        convert(tmp_path / "o", tmp_path / "o", force=True)


def test_cli(tmp_path, capsys):
    src = write_ckpt(tmp_path)
    assert main([str(src), str(tmp_path / "out"), "--dtype", "bf16"]) == 0
    printed = capsys.readouterr().out
    assert "base_model.safetensors" in printed and "total" in printed
    assert re.search(r"base_model\.safetensors .* \d+(\.\d+)? (B|KB)\n", printed)
    assert read_state_dict(tmp_path / "out")["vae.encoder.conv_in.weight"].dtype == torch.bfloat16
    assert main([str(src), str(tmp_path / "out")]) == 2
    assert "not empty" in capsys.readouterr().err


_MEMORY_CHILD = r"""
import importlib, sys, threading, time, types
import torch
# Import the two modules without the package __init__ (which pulls in the model code).
pkg = types.ModuleType("core_light")
pkg.__path__ = [sys.argv[3]]
sys.modules["core_light"] = pkg
convert = importlib.import_module("core_light.convert").convert

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

peak_anon, done = [0], [False]
def poll():
    while not done[0]:
        peak_anon[0] = max(peak_anon[0], status("RssAnon"))
        time.sleep(0.001)

anon_before = status("RssAnon")
thread = threading.Thread(target=poll)
thread.start()
convert(sys.argv[1], sys.argv[2], dtype="fp16", log=lambda s: None)
done[0] = True
thread.join()
print(peak_anon[0] - anon_before)
"""

_MEMORY_WRITER = r"""
import sys, torch
class Foreign:
    pass
prefixes = ["base_model", "unet", "resampler", "image_encoder", "text_encoder", "vae"]
state = {f"{p}.w{i}": torch.full((1_250_000,), float(i + 1)) for p in prefixes for i in range(5)}  # 30 x 5 MB
torch.save({"state_dict": state, "callbacks": Foreign(),
            "optimizer_states": [{"state": {0: {"exp_avg": torch.full((50_000_000,), 0.5)}}}]}, sys.argv[1])
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="measures memory through Linux /proc")
def test_conversion_allocates_about_one_tensor(tmp_path):
    """150 MB of fp32 weights (30 tensors of 5 MB) + 200 MB optimizer state -> fp16: the memory the
    converter allocates stays near one tensor, not a component, the checkpoint, or the optimizer state."""
    src, out = tmp_path / "big.ckpt", tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", _MEMORY_WRITER, str(src)], check=True, env=env)
    result = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(src), str(out), str(ROOT / "streamingt2v_core")],
                            check=True, env=env, capture_output=True, text=True)
    anon_growth = int(result.stdout.split()[-1])
    assert anon_growth < 20_000_000, f"anonymous memory grew by {anon_growth / 1e6:.0f} MB"
    state = read_state_dict(out)
    assert len(state) == 30 and state["vae.w4"].dtype == torch.float16 and float(state["vae.w4"][7]) == 5.0


def test_tiny_official_layout_ckpt_converts_and_loads(tmp_path, tiny_ckpt):
    """The oracle's tiny checkpoint as a Lightning .ckpt -> fp16 folder -> the model loader."""
    import shutil

    import streamingt2v_core as st
    from safetensors.torch import load_file

    tiny = load_file(str(tiny_ckpt))
    src = write_ckpt(tmp_path, state=tiny, name="tiny.ckpt")
    shutil.copyfile(tiny_ckpt.with_suffix(".json"), tmp_path / "tiny.json")
    out = tmp_path / "tiny_fp16"
    summary = convert(src, out, dtype="fp16", log=lambda s: None)
    assert sum(c["tensors"] for c in summary["components"].values()) == len(tiny) - (POSITION_IDS in tiny)

    state, meta = read_state_dict_with_meta(out)
    assert meta["config"] == json.loads((tmp_path / "tiny.json").read_text())
    model = st.load_streamingt2v(out)
    loaded = model.state_dict()
    for key in ("vae.encoder.conv_in.weight", "unet.controlnet_cond_embedding.conv_in.weight",
                "resampler.context_embedding.2.weight"):
        assert loaded[key].dtype == torch.float32
        assert torch.equal(loaded[key], tiny[key].half().float()), key
