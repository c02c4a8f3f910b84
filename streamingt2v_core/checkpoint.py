"""Reading StreamingT2V weights safely: the official Lightning ``.ckpt``, flat ``.safetensors`` files,
folders of per-component files written by :mod:`streamingt2v_core.convert`, or an in-memory state dict.

Safety: a ``.ckpt`` is a pickle. It is first read with ``torch.load(weights_only=True)``. A Lightning
checkpoint usually also carries callbacks, loops and hyper-parameters whose classes ``weights_only``
refuses; then the same file is read with ``torch.load(pickle_module=<restricted module>)``, whose
unpickler resolves only tensor-rebuild functions, storage types and plain containers. Every other global
becomes an inert stand-in class: its module is never imported and nothing it names is ever called.
Only the tensors under ``state_dict`` are kept.

Memory: zip checkpoints are memory-mapped (``mmap=True``), so tensors we never touch (the optimizer
state, about half of the official 25.6 GB file) stay on disk; the returned tensors are lazily paged,
copy-on-write views of the file. Safetensors files are memory-mapped the same way.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

__all__ = [
    "CheckpointError",
    "COMPONENT_PREFIXES",
    "DROPPED_KEYS",
    "COMPONENTS_FORMAT",
    "read_state_dict",
    "read_state_dict_with_meta",
    "validate_state_dict",
    "describe_foreign_layout",
    "sidecar_config_path",
]

# Top-level modules of the official VideoLDM (reference section 4.2); a converted folder holds one
# `<prefix>.safetensors` per entry, with the prefix stripped from its keys.
COMPONENT_PREFIXES = ("base_model", "unet", "resampler", "image_encoder", "text_encoder", "vae")
# Non-persistent buffer in transformers >= 4.31; older checkpoints may still carry it.
DROPPED_KEYS = ("text_encoder.text_model.embeddings.position_ids",)
# Value of "format" in the config.json the converter writes.
COMPONENTS_FORMAT = "streamingt2v-components"
# Keys the converter adds to config.json beside the model configuration.
_CONVERTER_KEYS = ("format", "dtype", "source")

_OFFICIAL_FIX = (
    "put the official streaming_t2v.ckpt (https://huggingface.co/PAIR/StreamingT2V, file streaming_t2v.ckpt) "
    "or a folder converted from it with `python -m streamingt2v_core.convert` in models/streamingt2v/"
)
_REDOWNLOAD_FIX = "the file is truncated or corrupt; delete it and download it again"


class CheckpointError(ValueError):
    """A weights file cannot be used. The message names the file, what is wrong and the fix."""


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


def _read_json(path: Path) -> dict | None:
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


def _sniff(path: Path) -> str:
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
                          f"Expected: {_OFFICIAL_FIX}")


def _check_zip(path: Path) -> None:
    """Reject truncated archives and TorchScript archives before torch touches them: `torch.load`
    hands TorchScript to `torch.jit.load`, which runs code."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path}: the zip archive is unreadable ({exc}); {_REDOWNLOAD_FIX}") from exc
    if any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in names):
        raise CheckpointError(f"{path}: this is a TorchScript archive, not a checkpoint of weights; {_OFFICIAL_FIX}")
    if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        raise CheckpointError(f"{path}: zip file without data.pkl, so not a torch.save checkpoint; {_OFFICIAL_FIX}")


def _torch_load(path: Path, kind: str) -> tuple[Any, str, list[str]]:
    """Unpickle a torch.save file safely; returns (object, loader name, foreign globals)."""
    use_mmap = kind == "zip"
    if use_mmap:
        _check_zip(path)
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


def _state_from_pickled(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj:
        state = obj["state_dict"]
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{path}: 'state_dict' is a {type(state).__name__}, not a mapping of tensors; "
                                  f"{_OFFICIAL_FIX}")
        return _checked_tensors(state, f"{path} ['state_dict']")
    if _is_flat_tensor_mapping(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        shown = ", ".join(repr(k) for k in list(obj)[:12])
        raise CheckpointError(f"{path}: no 'state_dict' in this checkpoint (top-level keys: {shown}) and it is not "
                              f"a flat mapping of names to tensors either; {_OFFICIAL_FIX}")
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a checkpoint dictionary; {_OFFICIAL_FIX}")


def _checked_tensors(state: Mapping, where: str) -> dict[str, torch.Tensor]:
    bad_keys = [k for k in state if not isinstance(k, str)]
    bad_values = [k for k, v in _items(state) if isinstance(k, str) and not isinstance(v, torch.Tensor)]
    if bad_keys or bad_values:
        detail = []
        if bad_keys:
            detail.append(f"{len(bad_keys)} non-string keys (e.g. {bad_keys[0]!r})")
        if bad_values:
            shown = ", ".join(f"{k} ({type(state[k]).__name__})" for k in bad_values[:10])
            detail.append(f"{len(bad_values)} entries that are not tensors: {shown}")
        raise CheckpointError(f"{where}: {'; '.join(detail)}; expected a mapping of key names to tensors. {_OFFICIAL_FIX}")
    if not state:
        raise CheckpointError(f"{where}: the state dict is empty; {_OFFICIAL_FIX}")
    # Parameters become plain tensors: weights only, no autograd state.
    return {k: (v.detach() if v.requires_grad or isinstance(v, torch.nn.Parameter) else v) for k, v in _items(state)}


def _read_safetensors(path: Path, where: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Memory-mapped read (safe_open maps the file; pages are read when a tensor is used)."""
    from safetensors import SafetensorError, safe_open

    where = where or str(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{where}: could not be read as safetensors ({exc}); {_REDOWNLOAD_FIX}") from exc
    if not state:
        raise CheckpointError(f"{where}: the safetensors file holds no tensors; {_OFFICIAL_FIX}")
    return state, metadata


def _read_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict | None, dict]:
    config = _read_json(folder / "config.json")
    files = sorted(p for p in folder.iterdir() if p.suffix == ".safetensors")
    known = {f"{prefix}.safetensors": prefix for prefix in COMPONENT_PREFIXES}
    unknown = [p.name for p in files if p.name not in known]
    if unknown:
        raise CheckpointError(
            f"{folder}: unexpected safetensors file(s) {', '.join(unknown)} in a folder of converted components "
            f"(allowed: {', '.join(known)}); pass a single-file checkpoint by its file path instead, or move the "
            f"extra files out of this folder")
    if not files:
        raise CheckpointError(f"{folder}: no component files ({', '.join(known)}) in this folder; "
                              f"convert the official checkpoint into it with "
                              f"`python -m streamingt2v_core.convert streaming_t2v.ckpt {folder}`")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        prefix = known[path.name]
        part, _ = _read_safetensors(path)
        for key, tensor in part.items():
            state[f"{prefix}.{key}"] = tensor
    bookkeeping = {}
    if config is not None and config.get("format") == COMPONENTS_FORMAT:
        bookkeeping = {k: config[k] for k in _CONVERTER_KEYS if k in config}
        config = {k: v for k, v in config.items() if k not in _CONVERTER_KEYS} or None
    return state, config, bookkeeping


def read_state_dict_with_meta(source) -> tuple[dict[str, torch.Tensor], dict]:
    """Read weights from `source` (see module docstring). Returns (state, meta) where meta holds
    "format" ("ckpt" | "safetensors" | "folder" | "dict"), "path" (str or None), "config" (dict from the
    sidecar JSON or None), "loader" (how it was read) and "foreign_globals" (classes a .ckpt referred to
    that were replaced by inert stand-ins)."""
    if isinstance(source, Mapping):
        inner = source["state_dict"] if "state_dict" in source else source
        if not isinstance(inner, Mapping):
            raise CheckpointError(f"state dict argument: 'state_dict' is a {type(inner).__name__}, not a mapping; "
                                  f"pass a mapping of key names to tensors")
        state = _checked_tensors(inner, "state dict argument")
        return state, {"format": "dict", "path": None, "config": None, "loader": "dict", "foreign_globals": []}
    if not isinstance(source, (str, os.PathLike)):
        raise CheckpointError(f"checkpoint source: expected a file or folder path or a state dict, got "
                              f"{type(source).__name__}")
    path = Path(source).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder; {_OFFICIAL_FIX}")
    meta: dict[str, Any] = {"path": str(path), "foreign_globals": []}
    if path.is_dir():
        state, config, bookkeeping = _read_folder(path)
        meta.update(format="folder", config=config, loader="safetensors", **{f"components_{k}": v for k, v in bookkeeping.items()})
        return state, meta
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{path}: the file is not readable (permissions); make it readable by this user")
    kind = _sniff(path)
    config = _read_json(sidecar_config_path(path))
    if kind == "safetensors":
        state, file_meta = _read_safetensors(path)
        meta.update(format="safetensors", config=config, loader="safetensors", file_metadata=file_meta)
        return state, meta
    obj, loader, foreign = _torch_load(path, kind)
    meta.update(format="ckpt", config=config, loader=loader, foreign_globals=foreign)
    if isinstance(obj, Mapping):
        meta["top_level_keys"] = [k for k in obj if isinstance(k, str)]
    state = _state_from_pickled(obj, path)
    del obj  # drops the optimizer state and everything else: only views of the state_dict survive
    return state, meta


def read_state_dict(source) -> dict[str, torch.Tensor]:
    """The tensors in `source`; see :func:`read_state_dict_with_meta`."""
    return read_state_dict_with_meta(source)[0]


# --------------------------------------------------------------------------------------------------
# Validation


def _has(keys: Iterable[str], *needles: str, prefix: bool = True) -> bool:
    return any((k.startswith(n) if prefix else n in k) for k in keys for n in needles)


def describe_foreign_layout(keys: Iterable[str]) -> str | None:
    """If these keys look like a well-known file that is not streaming_t2v.ckpt, say what it is."""
    keys = list(keys)
    if not keys:
        return None
    official = {k.split(".", 1)[0] for k in keys} & set(COMPONENT_PREFIXES)
    if official:
        return None
    for wrapper in ("module.", "model.", "_orig_mod."):
        stripped = [k[len(wrapper):] for k in keys if k.startswith(wrapper)]
        if stripped and {k.split(".", 1)[0] for k in stripped} & set(COMPONENT_PREFIXES):
            return (f"the StreamingT2V keys carry an extra '{wrapper}' prefix (a wrapped model); "
                    f"strip it, or use the official file")
    if _has(keys, "model.diffusion_model."):
        whole = _has(keys, "first_stage_model.", "cond_stage_model.", "conditioner.")
        return ("a Stable Diffusion / LDM checkpoint (keys 'model.diffusion_model.*'"
                + (", with its VAE and text encoder" if whole else "") + ")")
    if _has(keys, "input_blocks.", "middle_block.", "output_blocks.") and _has(keys, "time_embed."):
        return ("the MS-Vid2Vid-XL refiner UNet (keys 'input_blocks.*', 'middle_block.*'); it belongs to the "
                "refiner loader, not here")
    if _has(keys, "first_stage_model."):
        return "an LDM autoencoder (keys 'first_stage_model.*')"
    if _has(keys, "transformer_in.") or (_has(keys, "down_blocks.") and _has(keys, "temp_convs", prefix=False)):
        return ("a plain diffusers UNet3DConditionModel (ModelScope text-to-video-ms-1.7b 'unet'; keys "
                "'down_blocks.*' without the 'base_model.' prefix, no CAM, APM or mergers)")
    if _has(keys, "encoder.down_blocks.", "decoder.up_blocks.", "quant_conv.", "post_quant_conv."):
        return "a VAE only (diffusers AutoencoderKL; keys 'encoder.*', 'decoder.*')"
    if _has(keys, "encoder.down.", "decoder.up."):
        return "a VAE only (LDM autoencoder; keys 'encoder.down.*', 'decoder.up.*')"
    if _has(keys, "down_blocks.", "conv_in.", "mid_block."):
        return "a plain diffusers image UNet (keys 'down_blocks.*' at top level, no temporal layers)"
    if _has(keys, "controlnet_cond_embedding.", "controlnet_down_blocks."):
        return "a diffusers ControlNet on its own (keys 'controlnet_*' at top level)"
    if _has(keys, "text_model."):
        return "a CLIP text encoder only (transformers CLIPTextModel; keys 'text_model.*')"
    if _has(keys, "visual.", "transformer.resblocks."):
        return "an OpenCLIP model only (keys 'visual.*' / 'transformer.resblocks.*')"
    if _has(keys, "lora", "lora_", prefix=False):
        return "a LoRA / adapter file (keys mention 'lora')"
    return None


def _shape_str(shape) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def validate_state_dict(state: Mapping[str, torch.Tensor], expected_shapes: Mapping[str, tuple],
                        source_name: str, ignore: Iterable[str] = (), limit: int = 20) -> None:
    """Raise CheckpointError listing missing, unexpected and mis-shaped keys (first `limit` of each and
    their counts), with a specific hint when the file is a well-known different model."""
    ignored = set(ignore)
    present = {k: tuple(v.shape) for k, v in state.items() if k not in ignored}
    expected = {k: tuple(int(s) for s in v) for k, v in expected_shapes.items() if k not in ignored}
    missing = sorted(k for k in expected if k not in present)
    unexpected = sorted(k for k in present if k not in expected)
    misshaped = sorted(k for k in expected if k in present and present[k] != expected[k])
    if not (missing or unexpected or misshaped):
        return
    hint = describe_foreign_layout(present)
    lines = []
    if hint is not None:
        lines.append(f"{source_name}: this is not streaming_t2v.ckpt (it looks like {hint}).")
        fix = f"Fix: {_OFFICIAL_FIX}."
    else:
        lines.append(f"{source_name}: the weights do not match the StreamingT2V model: {len(missing)} missing, "
                     f"{len(unexpected)} unexpected, {len(misshaped)} mis-shaped keys.")
        if misshaped and not missing and not unexpected:
            fix = ("Fix: the key names are right but sizes differ, so the configuration does not fit this file: "
                   "give the model's config JSON (sidecar `<file>.json` or `config.json` in the folder), "
                   f"or {_OFFICIAL_FIX}.")
        else:
            fix = (f"Fix: {_OFFICIAL_FIX}; if the file was converted, convert it again from the official "
                   f"checkpoint (an interrupted download or conversion leaves keys out).")

    def section(title: str, items: list[str], render) -> None:
        if items:
            more = f" (first {limit})" if len(items) > limit else ""
            lines.append(f"  {title}: {len(items)}{more}")
            lines.extend(f"    {render(k)}" for k in items[:limit])

    section("missing", missing, lambda k: f"{k} {_shape_str(expected[k])}")
    section("unexpected", unexpected, lambda k: f"{k} {_shape_str(present[k])}")
    section("mis-shaped", misshaped,
            lambda k: f"{k}: file {_shape_str(present[k])}, expected {_shape_str(expected[k])}")
    lines.append(fix)
    raise CheckpointError("\n".join(lines))
