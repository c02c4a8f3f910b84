"""The safe weights reader (streamingt2v_core.common.weights), run with StreamingT2V's file rules as the
example family: restricted unpickling, file sniffing, safetensors, converted folders, memory mapping."""
from __future__ import annotations

import builtins
import collections
import importlib
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from streamingt2v_core.common.weights import (
    CheckpointError,
    ComponentFolder,
    CheckpointError,
    read_weights,
    read_weights_with_meta,
)
from tests.support.paths import ROOT

# StreamingT2V's rules, as its loader passes them.
FIX = ("put the official streaming_t2v.ckpt (https://huggingface.co/PAIR/StreamingT2V, file streaming_t2v.ckpt) "
       "or a folder converted from it with `python -m streamingt2v_core.convert` in models/streamingt2v/")
FOLDER = ComponentFolder(("base_model", "unet", "resampler", "image_encoder", "text_encoder", "vae"),
                         "streamingt2v-components",
                         "convert the official checkpoint into it with "
                         "`python -m streamingt2v_core.convert streaming_t2v.ckpt {folder}`")


def read_state_dict_with_meta(source):
    return read_weights_with_meta(source, FIX, FOLDER)


def read_state_dict(source):
    return read_state_dict_with_meta(source)[0]


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


def assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def make_module(folder: Path, source: str) -> str:
    """Write a throwaway module into `folder` (put on sys.path) and return its unique name."""
    name = f"ckpt_foreign_{uuid.uuid4().hex[:10]}"
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    return name


def forget_module(folder: Path, name: str, delete: bool) -> None:
    sys.modules.pop(name, None)
    sys.path.remove(str(folder))
    if delete:
        (folder / f"{name}.py").unlink()
    importlib.invalidate_caches()


# ---------------------------------------------------------------------------------------------- pickles


class _RunsCode:
    """Unpickling this with plain pickle calls `func(*args)`."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_code_in_pickle_never_runs_and_state_dict_still_loads(tmp_path):
    markers = [tmp_path / f"pwned{i}" for i in range(3)]
    state = small_state()
    ckpt = {
        "state_dict": state,
        "callbacks": {"evil": _RunsCode(os.system, f"touch {markers[0]}")},
        "hyper_parameters": {"evil": _RunsCode(builtins.open, str(markers[1]), "w")},
        "loops": [_RunsCode(builtins.exec, f"open({str(markers[2])!r}, 'w').close()")],
    }
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)

    loaded, meta = read_state_dict_with_meta(path)

    assert_same(loaded, state)
    assert not any(m.exists() for m in markers)
    assert meta["format"] == "ckpt" and meta["loader"] == "restricted"
    assert {"posix.system", "io.open", "builtins.exec"} <= set(meta["foreign_globals"])


def test_code_inside_state_dict_is_an_error_not_an_execution(tmp_path):
    marker = tmp_path / "pwned"
    state = dict(small_state())
    state["base_model.evil"] = _RunsCode(os.system, f"touch {marker}")
    path = tmp_path / "evil_inside.ckpt"
    torch.save({"state_dict": state}, path)

    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    assert not marker.exists()
    assert str(path) in str(err.value) and "base_model.evil" in str(err.value)


def test_foreign_module_is_never_imported_nor_its_classes_called(tmp_path):
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    name = make_module(mod_dir, """
        import os
        open(os.path.join(os.path.dirname(__file__), "imported"), "w").close()

        class Callback:
            def __init__(self, n):
                self.n = n
            def __setstate__(self, state):
                open(os.path.join(os.path.dirname(__file__), "setstate"), "w").close()
            def __reduce__(self):
                return (Callback, (self.n,), {"n": self.n})

        def build(n):
            open(os.path.join(os.path.dirname(__file__), "called"), "w").close()
        """)
    mod = importlib.import_module(name)
    state = small_state()
    obj = {"state_dict": state, "callbacks": {"cb": mod.Callback(3), "cbs": [mod.Callback(i) for i in range(3)]},
           "hyper_parameters": collections.OrderedDict(fn=_RunsCode(mod.build, 1))}
    path = tmp_path / "foreign.ckpt"
    torch.save(obj, path)
    (mod_dir / "imported").unlink()
    sys.modules.pop(name)  # still importable from sys.path: the reader must not import it
    try:
        loaded, meta = read_state_dict_with_meta(path)
        assert name not in sys.modules
    finally:
        forget_module(mod_dir, name, delete=False)
    assert_same(loaded, state)
    for marker in ("imported", "setstate", "called"):
        assert not (mod_dir / marker).exists(), marker
    assert f"{name}.Callback" in meta["foreign_globals"] and f"{name}.build" in meta["foreign_globals"]


def test_lightning_checkpoint_with_unimportable_classes_loads(tmp_path):
    mod_dir = tmp_path / "gone"
    mod_dir.mkdir()
    name = make_module(mod_dir, """
        class AttributeDict(dict):
            pass

        class Config:
            def __init__(self, **kw):
                self.__dict__.update(kw)
        """)
    mod = importlib.import_module(name)
    state = small_state()
    hp = collections.OrderedDict(lr=1e-5, cfg=mod.Config(steps=50, nested=mod.AttributeDict(a=1)), path=Path("/x"))
    ckpt = {
        "epoch": 7,
        "global_step": 1234,
        "pytorch-lightning_version": "2.2.1",
        "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 8}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_path": "x.ckpt", "cfg": mod.Config(k=2)}},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.randn(8, 4, 3, 3)}},
                              "param_groups": [{"lr": 1e-5, "betas": (0.9, 0.999), "params": [0]}]}],
        "lr_schedulers": [{"last_epoch": 3}],
        "hyper_parameters": hp,
    }
    path = tmp_path / "lightning.ckpt"
    torch.save(ckpt, path)
    forget_module(mod_dir, name, delete=True)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(name)

    loaded, meta = read_state_dict_with_meta(path)

    assert_same(loaded, state)
    assert meta["loader"] == "restricted"
    assert f"{name}.Config" in meta["foreign_globals"]
    assert "optimizer_states" in meta["top_level_keys"]


def test_parameters_and_storage_views_become_plain_tensors(tmp_path):
    base = torch.randn(10, 6)
    state = collections.OrderedDict(
        [("unet.a", torch.nn.Parameter(base.clone())), ("unet.b", base[2:5, 1:4]), ("unet.c", base.t()),
         ("unet.h", torch.randn(4, dtype=torch.float16)), ("unet.i", torch.arange(3))]
    )
    for foreign in (False, True):
        obj = {"state_dict": state}
        if foreign:
            obj["hyper_parameters"] = _RunsCode(print, "x")  # forces the restricted path
        path = tmp_path / f"views_{foreign}.ckpt"
        torch.save(obj, path)
        loaded, meta = read_state_dict_with_meta(path)
        assert meta["loader"] == ("restricted" if foreign else "weights_only")
        for k, v in state.items():
            assert type(loaded[k]) is torch.Tensor and not loaded[k].requires_grad
            assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v.detach()), k
        assert loaded["unet.c"].stride() == (1, 6)


class _ShadowedOrderedDict:
    """Pickles as an OrderedDict whose BUILD step sets instance attributes that shadow its methods."""

    def __init__(self, items):
        self.pairs = list(items)

    def __reduce__(self):
        return collections.OrderedDict, (), {"items": 1, "keys": 2, "get": 3}, None, iter(self.pairs)


@pytest.mark.parametrize("foreign", [False, True])
def test_shadowed_mapping_methods_do_not_derail_the_reader(tmp_path, foreign):
    state = small_state()
    obj = {"state_dict": _ShadowedOrderedDict(state.items())}
    if foreign:
        obj["callbacks"] = _RunsCode(print, "x")
    path = tmp_path / "shadowed.ckpt"
    torch.save(obj, path)
    loaded, meta = read_state_dict_with_meta(path)
    assert meta["loader"] == ("restricted" if foreign else "weights_only")
    assert_same(loaded, state)


def test_legacy_non_zip_format(tmp_path):
    state = small_state()
    path = tmp_path / "old.pth"
    torch.save({"state_dict": state, "callbacks": _RunsCode(print, "x")}, path, _use_new_zipfile_serialization=False)
    loaded, meta = read_state_dict_with_meta(path)
    assert meta["loader"] == "restricted"
    assert_same(loaded, state)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_state_dict(path)


def test_flat_pth_and_dict_sources(tmp_path):
    state = small_state()
    path = tmp_path / "flat.pth"
    torch.save(dict(state), path)
    loaded, meta = read_state_dict_with_meta(path)
    assert_same(loaded, state)
    assert meta["format"] == "ckpt" and meta["path"] == str(path)

    loaded, meta = read_state_dict_with_meta(state)
    assert_same(loaded, state)
    assert meta == {"format": "dict", "path": None, "config": None, "loader": "dict", "foreign_globals": []}
    assert_same(read_state_dict({"state_dict": state, "epoch": 1}), state)

    with pytest.raises(CheckpointError, match="not tensors"):
        read_state_dict({"unet.a": torch.zeros(1), "unet.b": [1, 2]})


def test_safetensors_and_sidecar_config(tmp_path):
    state = small_state()
    path = tmp_path / "model.safetensors"
    save_file(dict(state), path)
    loaded, meta = read_state_dict_with_meta(path)
    assert_same(dict(sorted(loaded.items())), dict(sorted(state.items())))
    assert meta["format"] == "safetensors" and meta["config"] is None

    (tmp_path / "model.json").write_text(json.dumps({"unet_config": {"block_out_channels": [64, 128]}}))
    assert read_state_dict_with_meta(path)[1]["config"] == {"unet_config": {"block_out_channels": [64, 128]}}

    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="model.json"):
        read_state_dict(path)


def test_ckpt_sidecar_config(tmp_path):
    path = tmp_path / "streaming_t2v.ckpt"
    torch.save({"state_dict": small_state()}, path)
    (tmp_path / "streaming_t2v.json").write_text('{"height": 64}')
    assert read_state_dict_with_meta(path)[1]["config"] == {"height": 64}


# ---------------------------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("keep", [0.5, 0.97, -20])
def test_truncated_ckpt(tmp_path, keep):
    path = tmp_path / "streaming_t2v.ckpt"
    torch.save({"state_dict": small_state(), "optimizer_states": [torch.randn(2000)]}, path)
    data = path.read_bytes()
    cut = int(len(data) * keep) if keep > 0 else len(data) + keep
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    msg = str(err.value)
    assert str(path) in msg and "truncated or corrupt" in msg and "download it again" in msg


@pytest.mark.parametrize("cut", [4, 40, -3])
def test_truncated_safetensors(tmp_path, cut):
    path = tmp_path / "unet.safetensors"
    save_file(dict(small_state()), path)
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut > 0 else data[:cut])
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    msg = str(err.value)
    assert str(path) in msg and "truncated or corrupt" in msg and "download it again" in msg


def test_empty_missing_and_garbage_files(tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_state_dict(empty)
    with pytest.raises(CheckpointError, match="no such file"):
        read_state_dict(tmp_path / "absent.ckpt")
    html = tmp_path / "page.ckpt"
    html.write_bytes(b"<!DOCTYPE html><html>rate limited</html>")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint or safetensors"):
        read_state_dict(html)


def test_ckpt_without_state_dict(tmp_path):
    path = tmp_path / "no_sd.ckpt"
    torch.save({"epoch": 1, "weights": torch.zeros(3), "optimizer_states": []}, path)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    msg = str(err.value)
    assert str(path) in msg and "no 'state_dict'" in msg and "'epoch'" in msg and "streaming_t2v.ckpt" in msg


def test_torchscript_archive_is_refused_without_running_it(tmp_path):
    path = tmp_path / "scripted.ckpt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(CheckpointError, match="TorchScript"):
        read_state_dict(path)


def test_folder_with_stray_files_or_nothing(tmp_path):
    with pytest.raises(CheckpointError, match="no component files"):
        read_state_dict(tmp_path)
    save_file({"x": torch.zeros(1)}, tmp_path / "streaming_t2v.safetensors")
    with pytest.raises(CheckpointError, match="streaming_t2v.safetensors"):
        read_state_dict(tmp_path)


# ---------------------------------------------------------------------------------------------- memory

_RSS_CHILD = r"""
import importlib.util, sys, torch
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
# The module alone (it imports nothing from the package): keeps the child light and the numbers clean.
spec = importlib.util.spec_from_file_location("checkpoint_under_test", sys.argv[2])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current RSS
before = status("VmRSS")
state, meta = module.read_weights_with_meta(sys.argv[1], "fix")
peak = status("VmHWM")
assert sorted(state) == ["unet.a", "unet.b"], sorted(state)
assert float(state["unet.a"].sum()) == 12.0
print(meta["loader"], peak - before)
"""

_WRITE_CHILD = r"""
import sys, torch
class Foreign:  # defined in __main__ of this child only, so weights_only refuses the file
    pass
obj = {"state_dict": {"unet.a": torch.ones(3, 4), "unet.b": torch.zeros(2)},
       "optimizer_states": [{"state": {0: {"exp_avg": torch.full((50_000_000,), 0.5)}}}]}
if sys.argv[2] == "foreign":
    obj["callbacks"] = {"cb": Foreign()}
torch.save(obj, sys.argv[1])
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures memory through Linux /proc")
@pytest.mark.parametrize("kind", ["plain", "foreign"])
def test_optimizer_state_stays_on_disk(tmp_path, kind):
    """A 200 MB optimizer tensor in the file must not be read into memory (mmap keeps it on disk)."""
    path = tmp_path / "big.ckpt"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", _WRITE_CHILD, str(path), kind], check=True, env=env)
    assert path.stat().st_size > 200_000_000
    module_file = ROOT / "streamingt2v_core" / "common" / "weights.py"
    out = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(path), str(module_file)], check=True, env=env,
                         capture_output=True, text=True).stdout.split()
    loader, peak_growth = out[0], int(out[1])
    assert loader == ("restricted" if kind == "foreign" else "weights_only")
    assert peak_growth < 40_000_000, f"peak RSS grew by {peak_growth / 1e6:.0f} MB while loading"


# ---------------------------------------------------------------------------------------------- one file


def test_read_weights_reads_one_file_of_any_kind(tmp_path):
    state = {"a.weight": torch.randn(3, 2), "a.bias": torch.zeros(3)}
    save_file(state, tmp_path / "w.safetensors")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "w.ckpt")
    torch.save(state, tmp_path / "w.pth")
    torch.save({"state_dict": state, "cb": _RunsCode(print, "x")}, tmp_path / "lightning.ckpt")  # restricted path
    for name in ("w.safetensors", "w.ckpt", "w.pth", "lightning.ckpt"):
        got = read_weights(tmp_path / name, "use the right file")
        assert sorted(got) == sorted(state), name
        assert all(torch.equal(got[k], state[k]) for k in state), name


def test_read_weights_errors_name_the_file_and_the_fix(tmp_path):
    assert CheckpointError is CheckpointError
    with pytest.raises(CheckpointError, match="no such file; give the RAFT file"):
        read_weights(tmp_path / "missing.pth", "give the RAFT file")
    with pytest.raises(CheckpointError, match="no such file"):
        read_weights(tmp_path, "give the RAFT file")  # a folder is not one file
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError) as err:
        read_weights(tmp_path / "list.pth", "give the RAFT file")
    assert str(tmp_path / "list.pth") in str(err.value) and str(err.value).endswith("give the RAFT file")


def test_a_family_without_a_folder_form_refuses_folders(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder"):
        read_weights_with_meta(tmp_path, "give a file")


def test_another_family_folder_rules(tmp_path):
    layout = ComponentFolder(("unet", "vae"), "other-components", "run `convert {folder}`")
    save_file({"w": torch.ones(2)}, tmp_path / "unet.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"format": "other-components", "dtype": "fp16", "size": 4}))
    state, meta = read_weights_with_meta(tmp_path, "fix", layout)
    assert list(state) == ["unet.w"] and meta["config"] == {"size": 4} and meta["components_dtype"] == "fp16"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=f"run `convert {empty}`"):
        read_weights_with_meta(empty, "fix", layout)
