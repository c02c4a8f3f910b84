"""Checks of a state dict against the module it is about to load into, with errors that name the file,
every wrong key and the fix (torch's own `load_state_dict` RuntimeError names neither file nor fix); and a
catalogue of well-known foreign layouts, so that a wrong file is named for what it is. Names no model
family: each family passes its model name, the file it expects, its fix and its top-level prefixes."""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from .weights import CheckpointError

# What building a model from shapes read off a file can raise when those shapes fit no architecture
# (diffusers' argument checks, GroupNorm's divisibility, a head count of zero): the loaders re-raise it as
# CheckpointError naming the keys that do not fit.
BUILD_ERRORS: tuple = (ValueError, RuntimeError, KeyError, TypeError, IndexError, ZeroDivisionError, AssertionError,
                       AttributeError)
try:  # transformers' configs validate themselves with huggingface_hub's strict dataclasses (not ValueErrors)
    from huggingface_hub.errors import StrictDataclassError

    BUILD_ERRORS += (StrictDataclassError,)
except ImportError:  # older huggingface_hub: its configs raise ValueError
    pass


def wrong_key_count(shapes: Mapping[str, tuple], expected: Mapping[str, tuple]) -> int:
    """Keys of `shapes` missing from, unexpected in or mis-shaped against `expected`."""
    return (len(set(shapes) ^ set(expected))
            + sum(1 for k in expected if k in shapes and tuple(shapes[k]) != tuple(expected[k])))


def shapes_of(build: Callable[[], nn.Module]) -> dict | None:
    """Key -> shape of the module `build()` makes (build on the meta device), or None when it builds none."""
    try:
        return {k: tuple(v.shape) for k, v in build().state_dict().items()}
    except BUILD_ERRORS:
        return None


def closer_fit(shapes: Mapping[str, tuple], inferred: Mapping[str, tuple],
               build_base: Callable[[], nn.Module]) -> Mapping[str, tuple]:
    """The expected shapes that explain a file best: `inferred` (the architecture read off the file), or the
    base architecture's when it leaves fewer wrong keys. One odd tensor among those the architecture is read
    from makes every key that depends on it look wrong under the inferred one; the base one names that tensor."""
    wrong = wrong_key_count(shapes, inferred)
    if not wrong:
        return inferred
    base = shapes_of(build_base)
    return base if base is not None and wrong_key_count(shapes, base) < wrong else inferred


def misshaped_error(where, rows: list[tuple[str, list, list]], fix: str, limit: int = 10) -> CheckpointError:
    """CheckpointError listing (key, expected shape, shape found in the file) rows, then `fix`."""
    more = f", the first {limit} shown" if len(rows) > limit else ""
    lines = [f"{where}: {len(rows)} tensor(s) have the wrong shape for the model{more}:"]
    lines += [f"  {key}: expected {list(exp)}, found {list(got)}" for key, exp, got in rows[:limit]]
    lines.append(fix)
    return CheckpointError("\n".join(lines))


def check_shapes(module: nn.Module, state: Mapping[str, torch.Tensor], where, fix: str,
                 names: Mapping[str, str] | None = None, file_state: Mapping[str, torch.Tensor] | None = None) -> None:
    """Before load_state_dict: CheckpointError naming `where`, every mis-shaped key with expected vs found, and
    `fix`. `names` maps the module's keys back to the file's and `file_state` holds the file's tensors when
    `state` was converted from them (then the file's key and shape are shown)."""
    own = module.state_dict()
    rows = []
    for k in own:
        if k not in state or tuple(state[k].shape) == tuple(own[k].shape):
            continue
        expected, found = list(own[k].shape), list(state[k].shape)
        if names and file_state is not None and k in names:
            found = list(file_state[names[k]].shape)
            if len(found) == len(expected) + 1 and found[-1] == 1:
                expected.append(1)  # a Conv1d(k=1) in the file that the module holds as a Linear
        rows.append(((names or {}).get(k, k), expected, found))
    if rows:
        raise misshaped_error(where, rows, fix)


# Weight dtypes a loader casts to its compute dtype without losing what the file holds. fp8 (and other
# 8-bit or smaller floats) are quantised storage: a plain cast to fp8 throws away most of the mantissa and a
# scaled fp8 file needs per-tensor scales that these models do not have, so neither is run as if it were the
# model (the bench keeps fp8 storage as a measured memory trick only).
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_DTYPE_FIX = ("Fix: use the original, unquantised file (fp32, fp16 or bf16 weights), not a quantised or "
              "re-exported one")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_dtypes(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.dtype], where, fix: str,
                 names: Mapping[str, str] | None = None, limit: int = 10) -> None:
    """Before loading: CheckpointError naming `where`, every key whose tensor cannot be the model's weight
    (an integer, bool or fp8 tensor where a float weight is expected, another dtype where a buffer has a fixed
    one) with the dtype found, and `fix`. `expected`: key -> the model's dtype (keys absent from `state` are
    left to the key check); `names` maps the model's keys to the file's where they differ."""
    rows = []
    for key, want in expected.items():
        if key not in state:
            continue
        got = state[key].dtype
        if want.is_floating_point:
            if got in WEIGHT_DTYPES:
                continue
            need = "a floating-point weight (float32, float16 or bfloat16)"
        elif got == want:
            continue
        else:
            need = _dtype_name(want)
        rows.append(((names or {}).get(key, key), got, need))
    if not rows:
        return
    more = f", the first {limit} shown" if len(rows) > limit else ""
    lines = [f"{where}: {len(rows)} tensor(s) have a dtype the model cannot use{more}:"]
    lines += [f"  {key}: found {_dtype_name(got)}, expected {need}" for key, got, need in rows[:limit]]
    quantised = any(not got.is_floating_point or got.itemsize < 2 for _, got, _ in rows)
    lines.append(f"{_DTYPE_FIX}; {fix}" if quantised else fix)
    raise CheckpointError("\n".join(lines))


def module_dtypes(module: nn.Module) -> dict[str, torch.dtype]:
    """key -> dtype of every tensor in `module`'s state dict (works on the meta device)."""
    return {k: v.dtype for k, v in module.state_dict().items()}


def _has(keys: Iterable[str], *needles: str, prefix: bool = True) -> bool:
    return any((k.startswith(n) if prefix else n in k) for k in keys for n in needles)


def describe_foreign_layout(keys: Iterable[str], prefixes: Iterable[str], model: str) -> str | None:
    """If these keys look like a well-known file that is not `model`'s (whose keys start with one of
    `prefixes`), say what it is; None for the model's own layout or an unknown one."""
    keys = list(keys)
    own = set(prefixes)
    if not keys:
        return None
    if {k.split(".", 1)[0] for k in keys} & own:
        return None
    for wrapper in ("module.", "model.", "_orig_mod."):
        stripped = [k[len(wrapper):] for k in keys if k.startswith(wrapper)]
        if stripped and {k.split(".", 1)[0] for k in stripped} & own:
            return (f"the {model} keys carry an extra '{wrapper}' prefix (a wrapped model); "
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
                        source_name: str, *, model: str, expected_file: str, fix: str, prefixes: Iterable[str],
                        ignore: Iterable[str] = (), limit: int = 20) -> None:
    """Raise CheckpointError listing missing, unexpected and mis-shaped keys (first `limit` of each and
    their counts), with a specific hint when the file is a well-known different model (see
    `describe_foreign_layout`). `model` ("StreamingT2V") and `expected_file` ("streaming_t2v.ckpt") name
    what was expected; `fix` says which file to use and where."""
    ignored = set(ignore)
    present = {k: tuple(v.shape) for k, v in state.items() if k not in ignored}
    expected = {k: tuple(int(s) for s in v) for k, v in expected_shapes.items() if k not in ignored}
    missing = sorted(k for k in expected if k not in present)
    unexpected = sorted(k for k in present if k not in expected)
    misshaped = sorted(k for k in expected if k in present and present[k] != expected[k])
    if not (missing or unexpected or misshaped):
        return
    hint = describe_foreign_layout(present, prefixes, model)
    lines = []
    if hint is not None:
        lines.append(f"{source_name}: this is not {expected_file} (it looks like {hint}).")
        advice = f"Fix: {fix}."
    else:
        lines.append(f"{source_name}: the weights do not match the {model} model: {len(missing)} missing, "
                     f"{len(unexpected)} unexpected, {len(misshaped)} mis-shaped keys.")
        if misshaped and not missing and not unexpected:
            advice = ("Fix: the key names are right but sizes differ, so the configuration does not fit this file: "
                      "give the model's config JSON (sidecar `<file>.json` or `config.json` in the folder), "
                      f"or {fix}.")
        else:
            advice = (f"Fix: {fix}; if the file was converted, convert it again from the official "
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
    lines.append(advice)
    raise CheckpointError("\n".join(lines))
