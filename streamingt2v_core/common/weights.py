"""Reading weights safely: ``.ckpt`` / ``.pth`` files written by ``torch.save`` (Lightning checkpoints
included), flat ``.safetensors`` files, folders of per-component files (one ``<prefix>.safetensors`` per
top-level module, :class:`ComponentFolder`), or an in-memory state dict. Names no model family: each
family passes the sentence that says which file to use (`fix`) and, where it has one, its folder rules.

Safety: a ``.ckpt`` is a pickle. It is first read with ``torch.load(weights_only=True)``. A Lightning
checkpoint usually also carries callbacks, loops and hyper-parameters whose classes ``weights_only``
refuses; then the same file is read with ``torch.load(pickle_module=<restricted module>)``, whose
unpickler resolves only tensor-rebuild functions, storage types and plain containers. Every other global
becomes an inert stand-in class: its module is never imported and nothing it names is ever called.
Only the tensors under ``state_dict`` are kept.

Memory: zip checkpoints are memory-mapped (``mmap=True``), so tensors we never touch (the optimizer
state, about half of the official 25.6 GB StreamingT2V file) stay on disk; the returned tensors are lazily
paged, copy-on-write views of the file. Safetensors files are memory-mapped the same way.

This module imports nothing from the package (a test loads it alone to measure its memory).
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import torch

__all__ = [
    "CheckpointError",
    "ComponentFolder",
    "read_weights",
    "read_weights_with_meta",
    "read_json",
    "sidecar_config_path",
]

_REDOWNLOAD_FIX = "the file is truncated or corrupt; delete it and download it again"


class CheckpointError(ValueError):
    """A weights file (checkpoint, safetensors, converted folder, config beside it) cannot be used. The
    message names the file, what is wrong (the key, where one is at fault) and the fix. The one load error
    of the pack: every family's loader raises it (RefinerLoadError is an older name of it)."""


class ComponentFolder(NamedTuple):
    """A family's folder of converted weights: one ``<prefix>.safetensors`` per entry of `prefixes`, the
    prefix stripped from its keys, and a ``config.json`` whose converter bookkeeping (``"format" ==
    format`` plus `converter_keys`) is kept apart from the model configuration. `convert_hint` says how
    to fill an empty folder; ``{folder}`` in it becomes the folder's path."""

    prefixes: tuple[str, ...]
    format: str
    convert_hint: str
    converter_keys: tuple[str, ...] = ("format", "dtype", "source")


# --------------------------------------------------------------------------------------------------
# Restricted unpickling


class _InertStandIn:
    """Instance type for any global the restricted unpickler does not allow: accepts whatever the
    pickle hands it (constructor args, state, items) and keeps none of it."""

    _global_name = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass

    def add(self, value):
        pass

    def __call__(self, *args, **kwargs):
        return type(self)()

    def __repr__(self):
        return f"<inert stand-in for {self._global_name}>"


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    # Hooks and metadata come from the file; neither is needed for weights, so neither is applied.
    return torch._utils._rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    if not isinstance(dtype, torch.dtype) or not isinstance(storage, torch.UntypedStorage):
        raise pickle.UnpicklingError("malformed _rebuild_tensor_v3 record")
    return torch._utils._rebuild_tensor_v3(storage, storage_offset, size, stride, False, collections.OrderedDict(), dtype)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return torch._utils._rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    # A parameter's weights are its data; python state and hooks are dropped.
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("malformed parameter record")
    return data


_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)


def _rebuild_from_type_v2(func, new_type, args, state):
    # Tensors carrying python attributes are saved through this; keep plain tensors, drop the state.
    if func in _REBUILDERS and new_type in (torch.Tensor, torch.nn.Parameter) and isinstance(args, tuple):
        return func(*args)
    return _InertStandIn()


_BUILTIN_CONTAINERS = {
    name: getattr(__import__("builtins"), name)
    for name in ("set", "frozenset", "list", "dict", "tuple", "complex", "slice", "bytearray",
                 "int", "float", "bool", "str", "bytes")
}

_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): torch.Tensor,
    ("torch._tensor", "Tensor"): torch.Tensor,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch", "UntypedStorage"): torch.UntypedStorage,
    ("torch.storage", "UntypedStorage"): torch.UntypedStorage,
    ("collections", "OrderedDict"): collections.OrderedDict,
}
_OLD_MODULE_NAMES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _resolve_allowed(module: str, name: str):
    """The object an allowed global stands for, or None. Never imports anything."""
    if module == "builtins":
        return _BUILTIN_CONTAINERS.get(name)
    found = _ALLOWED_GLOBALS.get((module, name))
    if found is not None:
        return found
    if module == "torch":
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype):
            return value
        if name.endswith("Storage") and name != "UntypedStorage":
            try:  # legacy typed storages (torch.FloatStorage, ...) are only dtype markers here
                return torch.serialization.StorageType(name)
            except KeyError:
                return None
    return None


def _make_restricted_pickle_module(foreign: set[str]) -> types.ModuleType:
    """A stand-in for the `pickle` module, for `torch.load(pickle_module=...)`. `foreign` collects the
    names of the globals that were replaced by inert stand-ins."""
    stand_ins: dict[str, type] = {}

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if not isinstance(module, str) or not isinstance(name, str):
                raise pickle.UnpicklingError("malformed global in checkpoint pickle")
            module = _OLD_MODULE_NAMES.get(module, module)  # protocol-2 pickles say __builtin__
            allowed = _resolve_allowed(module, name)
            if allowed is not None:
                return allowed
            qualified = f"{module}.{name}"
            foreign.add(qualified)
            if qualified not in stand_ins:
                stand_ins[qualified] = type(f"InertStandIn[{qualified}]", (_InertStandIn,),
                                            {"_global_name": qualified, "__module__": __name__})
            return stand_ins[qualified]

    def load(file, **kwargs):
        return RestrictedUnpickler(file, **kwargs).load()

    module = types.ModuleType("streamingt2v_restricted_pickle")
    module.Unpickler = RestrictedUnpickler
    module.load = load
    module.UnpicklingError = pickle.UnpicklingError
    return module


# --------------------------------------------------------------------------------------------------
# File formats


def sidecar_config_path(path: str | os.PathLike) -> Path:
    """Where the configuration for `path` lives: `X.json` beside file `X.<ext>`, `config.json` in a folder."""
    path = Path(path)
    if path.is_dir():
        return path / "config.json"
    return path.with_suffix(".json")


def read_json(path: Path) -> dict | None:
    """The JSON object in `path` (None when there is no such file); CheckpointError naming the file otherwise."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); fix the file or delete it") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object with the model configuration, "
                              f"got {type(data).__name__}; fix the file or delete it")
    return data



def _sniff(path: Path, fix: str) -> str:
    """'zip' (torch.save), 'legacy' (pre-1.6 torch.save pickle), 'safetensors', or raise."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty; {_REDOWNLOAD_FIX}")
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) >= 9 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if header_len + 8 > size:
            raise CheckpointError(f"{path}: safetensors header says {header_len} bytes but the file has {size}; "
                               f"{_REDOWNLOAD_FIX}")
        return "safetensors"
    if head[:1] == b"\x80":
        return "legacy"
    raise CheckpointError(f"{path}: not a PyTorch checkpoint or safetensors file (unknown header bytes "
                       f"{head[:8]!r}); it may be corrupt or an HTML error page: {_REDOWNLOAD_FIX}. "
                       f"Expected: {fix}")


def _check_zip(path: Path, fix: str) -> None:
    """Reject truncated archives and TorchScript archives before torch touches them: `torch.load`
    hands TorchScript to `torch.jit.load`, which runs code."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path}: the zip archive is unreadable ({exc}); {_REDOWNLOAD_FIX}") from exc
    if any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in names):
        raise CheckpointError(f"{path}: this is a TorchScript archive, not a checkpoint of weights; {fix}")
    if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        raise CheckpointError(f"{path}: zip file without data.pkl, so not a torch.save checkpoint; {fix}")


def _torch_load(path: Path, kind: str, fix: str) -> tuple[Any, str, list[str]]:
    """Unpickle a torch.save file safely; returns (object, loader name, foreign globals)."""
    use_mmap = kind == "zip"
    if use_mmap:
        _check_zip(path, fix)
    corrupt = (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError,
               AttributeError, OverflowError, zipfile.BadZipFile)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap), "weights_only", []
    except pickle.UnpicklingError:
        pass  # foreign classes beside the weights (Lightning extras): read again, restricted
    except corrupt as exc:
        raise CheckpointError(f"{path}: could not be read ({type(exc).__name__}: {exc}); {_REDOWNLOAD_FIX}") from exc
    foreign: set[str] = set()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, mmap=use_mmap,
                         pickle_module=_make_restricted_pickle_module(foreign))
    except (pickle.UnpicklingError, *corrupt) as exc:
        raise CheckpointError(f"{path}: could not be read ({type(exc).__name__}: {exc}); {_REDOWNLOAD_FIX}") from exc
    return obj, "restricted", sorted(foreign)


def _items(mapping: Mapping):
    # A pickle can BUILD instance attributes onto an OrderedDict (e.g. one named "items"); the dict
    # methods themselves cannot be shadowed that way.
    return dict.items(mapping) if isinstance(mapping, dict) else mapping.items()


def _is_flat_tensor_mapping(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in _items(obj)))


def _state_from_pickled(obj: Any, path: Path, fix: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj:
        state = obj["state_dict"]
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{path}: 'state_dict' is a {type(state).__name__}, not a mapping of tensors; {fix}")
        return _checked_tensors(state, f"{path} ['state_dict']", fix)
    if _is_flat_tensor_mapping(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        shown = ", ".join(repr(k) for k in list(obj)[:12])
        raise CheckpointError(f"{path}: no 'state_dict' in this checkpoint (top-level keys: {shown}) and it is not "
                           f"a flat mapping of names to tensors either; {fix}")
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a checkpoint dictionary; {fix}")


def _checked_tensors(state: Mapping, where: str, fix: str) -> dict[str, torch.Tensor]:
    bad_keys = [k for k in state if not isinstance(k, str)]
    bad_values = [k for k, v in _items(state) if isinstance(k, str) and not isinstance(v, torch.Tensor)]
    if bad_keys or bad_values:
        detail = []
        if bad_keys:
            detail.append(f"{len(bad_keys)} non-string keys (e.g. {bad_keys[0]!r})")
        if bad_values:
            shown = ", ".join(f"{k} ({type(state[k]).__name__})" for k in bad_values[:10])
            detail.append(f"{len(bad_values)} entries that are not tensors: {shown}")
        raise CheckpointError(f"{where}: {'; '.join(detail)}; expected a mapping of key names to tensors. {fix}")
    if not state:
        raise CheckpointError(f"{where}: the state dict is empty; {fix}")
    # Parameters become plain tensors: weights only, no autograd state.
    return {k: (v.detach() if v.requires_grad or isinstance(v, torch.nn.Parameter) else v) for k, v in _items(state)}


def _read_safetensors(path: Path, fix: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Memory-mapped read (safe_open maps the file; pages are read when a tensor is used)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: could not be read as safetensors ({exc}); {_REDOWNLOAD_FIX}") from exc
    if not state:
        raise CheckpointError(f"{path}: the safetensors file holds no tensors; {fix}")
    return state, metadata


def _read_folder(folder: Path, layout: ComponentFolder, fix: str) -> tuple[dict[str, torch.Tensor], dict | None, dict]:
    config = read_json(folder / "config.json")
    files = sorted(p for p in folder.iterdir() if p.suffix == ".safetensors")
    known = {f"{prefix}.safetensors": prefix for prefix in layout.prefixes}
    unknown = [p.name for p in files if p.name not in known]
    if unknown:
        raise CheckpointError(
            f"{folder}: unexpected safetensors file(s) {', '.join(unknown)} in a folder of converted components "
            f"(allowed: {', '.join(known)}); pass a single-file checkpoint by its file path instead, or move the "
            f"extra files out of this folder")
    if not files:
        raise CheckpointError(f"{folder}: no component files ({', '.join(known)}) in this folder; "
                           f"{layout.convert_hint.format(folder=folder)}")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        prefix = known[path.name]
        part, _ = _read_safetensors(path, fix)
        for key, tensor in part.items():
            state[f"{prefix}.{key}"] = tensor
    bookkeeping = {}
    if config is not None and config.get("format") == layout.format:
        bookkeeping = {k: config[k] for k in layout.converter_keys if k in config}
        config = {k: v for k, v in config.items() if k not in layout.converter_keys} or None
    return state, config, bookkeeping


def _checked_file(path: Path, fix: str) -> None:
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{path}: the file is not readable (permissions); make it readable by this user")


def read_weights_with_meta(source, fix: str, folder: ComponentFolder | None = None
                           ) -> tuple[dict[str, torch.Tensor], dict]:
    """Read weights from `source`: a file or folder path, or a state dict (see module docstring). `fix` ends
    every message about a file that is not the expected one (which file to use, where); `folder`: the family's
    converted-folder rules, None where it has no folder form. Returns (state, meta) where meta holds
    "format" ("ckpt" | "safetensors" | "folder" | "dict"), "path" (str or None), "config" (dict from the
    sidecar JSON or None), "loader" (how it was read) and "foreign_globals" (classes a .ckpt referred to
    that were replaced by inert stand-ins)."""
    if isinstance(source, Mapping):
        inner = source["state_dict"] if "state_dict" in source else source
        if not isinstance(inner, Mapping):
            raise CheckpointError(f"state dict argument: 'state_dict' is a {type(inner).__name__}, not a mapping; "
                               f"pass a mapping of key names to tensors")
        state = _checked_tensors(inner, "state dict argument", fix)
        return state, {"format": "dict", "path": None, "config": None, "loader": "dict", "foreign_globals": []}
    if not isinstance(source, (str, os.PathLike)):
        raise CheckpointError(f"checkpoint source: expected a file or folder path or a state dict, got "
                           f"{type(source).__name__}")
    path = Path(source).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder; {fix}")
    meta: dict[str, Any] = {"path": str(path), "foreign_globals": []}
    if path.is_dir():
        if folder is None:
            raise CheckpointError(f"{path}: is a folder; give the weights file itself: {fix}")
        state, config, bookkeeping = _read_folder(path, folder, fix)
        meta.update(format="folder", config=config, loader="safetensors", **{f"components_{k}": v for k, v in bookkeeping.items()})
        return state, meta
    _checked_file(path, fix)
    kind = _sniff(path, fix)
    config = read_json(sidecar_config_path(path))
    if kind == "safetensors":
        state, file_meta = _read_safetensors(path, fix)
        meta.update(format="safetensors", config=config, loader="safetensors", file_metadata=file_meta)
        return state, meta
    obj, loader, foreign = _torch_load(path, kind, fix)
    meta.update(format="ckpt", config=config, loader=loader, foreign_globals=foreign)
    if isinstance(obj, Mapping):
        meta["top_level_keys"] = [k for k in obj if isinstance(k, str)]
    state = _state_from_pickled(obj, path, fix)
    del obj  # drops the optimizer state and everything else: only views of the state_dict survive
    return state, meta


def read_weights(path: str | os.PathLike, fix: str) -> dict[str, torch.Tensor]:
    """The tensors of one weights file: safetensors (memory-mapped) or torch.save (.pth/.bin/.ckpt, a
    {'state_dict': ...} wrapper unwrapped, foreign globals read by the restricted unpickler). Every failure
    is a CheckpointError naming the file, ending in `fix`. No sidecar config is read."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; {fix}")
    _checked_file(path, fix)
    kind = _sniff(path, fix)
    if kind == "safetensors":
        return _read_safetensors(path, fix)[0]
    obj, _loader, _foreign = _torch_load(path, kind, fix)
    return _state_from_pickled(obj, path, fix)
