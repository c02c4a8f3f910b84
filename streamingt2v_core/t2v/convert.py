"""Convert StreamingT2V weights into one safetensors file per component.

    python -m streamingt2v_core.convert SRC OUT_DIR [--dtype fp16|bf16|fp32] [--force]

SRC is anything :func:`streamingt2v_core.t2v.weights.read_state_dict` reads (the official 25.6 GB
``streaming_t2v.ckpt``, a flat safetensors file, or an already converted folder). OUT_DIR receives
``base_model.safetensors``, ``unet.safetensors``, ``resampler.safetensors``, ``image_encoder.safetensors``,
``text_encoder.safetensors``, ``vae.safetensors`` (keys without their prefix) and ``config.json``.

The source is memory-mapped and written one tensor at a time (cast, write, drop), component after
component, so the memory the conversion allocates is about one tensor, never the whole checkpoint.
Everything is written under temporary names inside OUT_DIR and renamed only when all files are
complete; on any error the temporary files are removed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from ..common.dtypes import DTYPES
from ..common.weights import CheckpointError
from .weights import COMPONENT_PREFIXES, COMPONENTS_FORMAT, describe_foreign_layout, read_state_dict_with_meta
from .config import DROPPED_KEYS

_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
for _name, _code in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")):
    if hasattr(torch, _name):
        _SAFETENSORS_DTYPES[getattr(torch, _name)] = _code


def split_components(state: dict[str, torch.Tensor], source_name: str) -> dict[str, dict[str, torch.Tensor]]:
    """Group keys by component prefix (prefix stripped), dropping DROPPED_KEYS. Raises before any
    writing if a key belongs to no component, since the converted folder would silently lose it."""
    parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in COMPONENT_PREFIXES}
    orphans = []
    for key, tensor in state.items():
        if key in DROPPED_KEYS:
            continue
        prefix, _, rest = key.partition(".")
        if prefix in parts and rest:
            parts[prefix][rest] = tensor
        else:
            orphans.append(key)
    if orphans:
        hint = describe_foreign_layout(state)
        what = f"this is not streaming_t2v.ckpt (it looks like {hint}); " if hint else ""
        shown = ", ".join(sorted(orphans)[:20])
        raise CheckpointError(
            f"{source_name}: {what}{len(orphans)} keys belong to none of the components "
            f"({', '.join(COMPONENT_PREFIXES)}): {shown}. Fix: convert the official streaming_t2v.ckpt "
            f"(https://huggingface.co/PAIR/StreamingT2V)")
    return {p: part for p, part in parts.items() if part}


def _out_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    return dtype if tensor.is_floating_point() else tensor.dtype


def write_safetensors(f, tensors: dict[str, torch.Tensor], dtype: torch.dtype,
                      metadata: dict[str, str] | None = None) -> int:
    """Write `tensors` (floating ones cast to `dtype`) as safetensors into the binary file `f`, streaming
    one tensor at a time. Returns the number of bytes written."""
    if sys.byteorder != "little":
        raise RuntimeError("safetensors files are little-endian; converting on a big-endian machine is not supported")
    names = sorted(tensors)
    header: dict[str, object] = {"__metadata__": dict(metadata or {})}
    offset = 0
    for name in names:
        t = tensors[name]
        out = _out_dtype(t, dtype)
        if out not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"tensor {name}: dtype {t.dtype} cannot be stored in safetensors by this converter")
        nbytes = t.numel() * torch.empty((), dtype=out).element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[out], "shape": list(t.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    f.write(len(blob).to_bytes(8, "little"))
    f.write(blob)
    for name in names:
        t = tensors[name]
        data = t.detach().to(device="cpu", dtype=_out_dtype(t, dtype)).contiguous()
        if data.numel():
            f.write(memoryview(data.reshape(-1).view(torch.uint8).numpy()))
        del data
    return 8 + len(blob) + offset


def _human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.2f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.2f} GB"


def _check_out_dir(out_dir: Path, src: Path | None, force: bool) -> bool:
    """Validate OUT_DIR before any heavy work; returns whether it already exists."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"{out_dir}: exists and is not a folder; choose a folder path for OUT_DIR")
    if src is not None and src.is_dir() and out_dir.exists() and out_dir.resolve() == src.resolve():
        raise CheckpointError(f"{out_dir}: OUT_DIR is the source folder; write the conversion to another folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise CheckpointError(f"{out_dir}: OUT_DIR is not empty; choose an empty or new folder, or pass --force "
                              f"to replace the component files and config.json in it")
    return out_dir.exists()


def convert(src, out_dir, dtype: str = "fp16", force: bool = False,
            log: Callable[[str], None] = print) -> dict:
    """Convert `src` into per-component safetensors in `out_dir`. Returns a summary:
    {"dtype", "out_dir", "components": {prefix: {"file", "tensors", "params", "bytes"}}, "bytes", "seconds"}."""
    if dtype not in DTYPES:
        raise CheckpointError(f"--dtype {dtype!r}: unknown; use one of {', '.join(DTYPES)}")
    target = DTYPES[dtype]
    out_dir = Path(out_dir).expanduser()
    src_path = Path(src).expanduser() if isinstance(src, (str, os.PathLike)) else None
    existed = _check_out_dir(out_dir, src_path, force)

    start = time.perf_counter()
    state, meta = read_state_dict_with_meta(src)
    source_name = meta["path"] or "state dict"
    parts = split_components(state, source_name)
    if not parts:
        raise CheckpointError(f"{source_name}: no StreamingT2V component keys found; convert the official "
                              f"streaming_t2v.ckpt (https://huggingface.co/PAIR/StreamingT2V)")

    config = dict(meta.get("config") or {})
    config.update({"format": COMPONENTS_FORMAT, "dtype": dtype,
                   "source": os.path.basename(meta["path"]) if meta["path"] else None})

    out_dir.mkdir(parents=True, exist_ok=True)
    pending: list[tuple[Path, Path]] = []  # (temporary, final)

    def open_temp(final_name: str, mode: str):
        # mkstemp creates a new file with O_EXCL: an existing file or symlink is never opened or followed.
        fd, name = tempfile.mkstemp(prefix=f".{final_name}.", suffix=".tmp", dir=out_dir)
        pending.append((Path(name), out_dir / final_name))
        if hasattr(os, "fchmod"):  # not on Windows before Python 3.13
            os.fchmod(fd, 0o644)
        return os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))

    summary: dict = {"dtype": dtype, "out_dir": str(out_dir), "components": {}}
    total = 0
    try:
        for prefix in COMPONENT_PREFIXES:
            if prefix not in parts:
                continue
            tensors = parts.pop(prefix)
            final_name = f"{prefix}.safetensors"
            with open_temp(final_name, "wb") as f:
                nbytes = write_safetensors(f, tensors, target, {"format": "pt", "streamingt2v_component": prefix})
                f.flush()
                os.fsync(f.fileno())
            params = sum(t.numel() for t in tensors.values())
            summary["components"][prefix] = {"file": final_name, "tensors": len(tensors),
                                             "params": params, "bytes": nbytes}
            total += nbytes
            log(f"  {final_name:<28} {len(tensors):>5} tensors  {params / 1e6:>9.2f} M params  {_human(nbytes):>10}")
            del tensors
        with open_temp("config.json", "w") as f:
            json.dump(config, f, indent=1)
            f.write("\n")
        # All complete: rename into place (os.replace swaps a symlinked name itself, never its target).
        for temp, final in pending:
            os.replace(temp, final)
        pending.clear()
        stale = [out_dir / f"{p}.safetensors" for p in COMPONENT_PREFIXES if p not in summary["components"]]
        for path in stale:
            if path.is_file() or path.is_symlink():
                path.unlink()  # a leftover from an earlier conversion would be mixed into this one
    except BaseException:
        for temp, _ in pending:
            if temp.exists() or temp.is_symlink():
                temp.unlink()
        if not existed and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    del state
    summary["bytes"] = total
    summary["seconds"] = time.perf_counter() - start
    log(f"  total {_human(total)} ({dtype}) in {summary['seconds']:.1f} s -> {out_dir}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streamingt2v_core.convert",
        description="Convert streaming_t2v.ckpt (or a safetensors copy) into per-component safetensors files.")
    parser.add_argument("src", help="official streaming_t2v.ckpt, a flat .safetensors, or a converted folder")
    parser.add_argument("out_dir", help="folder to write <component>.safetensors and config.json into")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16",
                        help="dtype of the floating-point tensors (default fp16, about 6.5 GB)")
    parser.add_argument("--force", action="store_true", help="replace the component files in a non-empty OUT_DIR")
    args = parser.parse_args(argv)
    print(f"converting {args.src} -> {args.out_dir} ({args.dtype})")
    try:
        convert(args.src, args.out_dir, dtype=args.dtype, force=args.force)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
