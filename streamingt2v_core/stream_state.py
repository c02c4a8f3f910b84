"""A stream's state after any chunk as one .safetensors file, so another process (or server) continues it
bit for bit: the tensors the next chunk reads, the torch generator state after the last chunk, and a
JSON record (settings, prompts, counts, the model's identity, the format version) in the header.

Only safetensors is read: the header is parsed and checked here before any tensor is touched, and no
byte of a file is ever unpickled.

Families: each model family declares the tensors and settings its state holds in `FAMILIES`; adding a
family is one `Family(...)` entry there (the file layout, checks and refusals are shared).
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .common.dtypes import dtype_name

FORMAT_VERSION = 1
OLDEST_READABLE = 1  # formats from this one on are read (an upgrade step goes in `_upgrade` when one changes)
META_KEY = "streamingt2v_stream_state"  # the header metadata entry that makes a safetensors file a state
GENERATOR_KEY = "generator_state"
FRAMES_KEY = "frames"
_HEADER_MAX = 100 * 1024 * 1024  # a state's header is a few KB; a bigger length field is not a state
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "U8": torch.uint8}


@dataclass(frozen=True)
class Family:
    """What one model family's state holds besides the shared fields: tensors by name -> number of dims,
    and settings (JSON values) by name -> Python type."""
    name: str
    tensors: dict
    settings: dict


FAMILIES = {
    "streamingt2v": Family(
        "streamingt2v",
        tensors={"cond_frames": 4,       # (cond_frames, 3, H, W) float32 in [0, 1]: the CAM's input
                 "anchor_tokens": 3,     # (1, 16, D) float32: APM tokens of the anchor
                 "anchor_image": 4},     # (1, 3, H, W) float32 in [0, 1]: the anchor frame
        settings={"prompts": list, "negative_prompt": str, "steps": int, "guidance": float, "eta": float,
                  "anchor_source": str}),
    "streamingsvd": Family(
        "streamingsvd",
        tensors={"cond_frames": 4,       # (7, 3, H, W) float32 in [-1, 1]: the CAM's control frames, as sampled
                 "images": 4,            # (K, 3, H, W) float32 in [-1, 1]: the SVD image of each chunk
                 "embeddings": 3},       # (K, 1, D) float32: their CLIP image embeddings
        settings={"image_source": str}),
}


class StateError(ValueError):
    """A file that cannot be continued from; the message names both sides and the fix."""


@dataclass
class ModelIdentity:
    """Which weights made a stream: bit-identical continuation needs the same bytes in the same dtype."""
    name: str
    size: int
    hash: str
    dtype: str

    def describe(self) -> str:
        return f"'{self.name}' ({self.size} bytes, hash {self.hash[:12]}, {self.dtype})"


@dataclass
class SavedStream:
    """Everything a state file holds. `tensors` and `settings` are the family's (FAMILIES)."""
    family: str
    model: ModelIdentity
    seed: int
    generator_state: torch.Tensor  # torch.Generator.get_state() after the last chunk: uint8, CPU
    num_chunks: int
    num_frames: int
    tensors: dict
    settings: dict
    frames: torch.Tensor | None = None  # every frame so far, when saved with them (off by default: size)
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)  # fields a newer compatible writer added; kept, not used


def _sample_blocks(path: Path, size: int, h, block: int = 1 << 16, count: int = 8) -> None:
    """The first MiB (a safetensors header and its first tensors) and `count` blocks spread over the rest."""
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        for i in range(count):
            f.seek(max(0, (size - block) * (i + 1) // count))
            h.update(f.read(block))


def model_identity(path, name: str, dtype: torch.dtype | str) -> ModelIdentity:
    """Name, size and a fast content hash (sampled blocks, not the whole file: milliseconds for 6.5 GB) of
    a weights file, or of every file in a converted folder, and the dtype the weights run in (a torch dtype
    or its loader name: fp16, bf16, fp32)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    total = 0
    for p in files:
        size = p.stat().st_size
        total += size
        h.update(f"{p.relative_to(path) if path.is_dir() else ''}\0{size}\0".encode())
        _sample_blocks(p, size, h)
    name_of_dtype = dtype if isinstance(dtype, str) else dtype_name(dtype)
    return ModelIdentity(name=name, size=total, hash=h.hexdigest(), dtype=name_of_dtype)


def identity_problem(saved: ModelIdentity, current: ModelIdentity) -> str | None:
    """Why a state made with `saved` cannot be continued with `current` (None: it can). The name alone may
    differ (a renamed copy is the same weights)."""
    if (saved.size, saved.hash) != (current.size, current.hash):
        return (f"the state was made with model {saved.describe()}, this model is {current.describe()}: "
                f"other weights give other frames; load '{saved.name}' (in {saved.dtype}) to continue it")
    if saved.dtype != current.dtype:
        return (f"the state was made with model {saved.describe()} in {saved.dtype}, this model runs in "
                f"{current.dtype}: the frames would differ; load '{saved.name}' with dtype {saved.dtype}")
    return None


def _check_family_fields(family: Family, tensors: dict, settings: dict, where: str) -> None:
    missing = [k for k in family.tensors if k not in tensors] + [k for k in family.settings if k not in settings]
    if missing:
        raise StateError(f"{where}: the {family.name} state lacks {missing}; it was not written by SaveStreamState "
                         f"of this pack: save the stream again")
    for k, ndim in family.tensors.items():
        t = tensors[k]
        if not isinstance(t, torch.Tensor) or t.ndim != ndim or not t.is_floating_point():
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise StateError(f"{where}: {family.name} tensor '{k}' must be a float tensor with {ndim} dims, got {got}")
    for k, kind in family.settings.items():
        ok = isinstance(settings[k], (int, float)) and not isinstance(settings[k], bool) if kind is float \
            else isinstance(settings[k], kind) and not (kind is int and isinstance(settings[k], bool))
        if not ok:
            raise StateError(f"{where}: setting '{k}' must be {kind.__name__}, got {settings[k]!r}")


def _family(name: str, where: str) -> Family:
    if name not in FAMILIES:
        raise StateError(f"{where}: a state of the '{name}' family; this pack knows {sorted(FAMILIES)}: "
                         f"update ComfyUI-StreamingT2V or load the state with the pack that wrote it")
    return FAMILIES[name]


def write_state(path, state: SavedStream) -> int:
    """Writes `state` to `path` through a temporary file in the same folder and an atomic rename, so a
    crash leaves no half-written file under the final name. Returns the file size in bytes."""
    from safetensors.torch import save_file

    path = Path(path)
    family = _family(state.family, str(path))
    _check_family_fields(family, state.tensors, state.settings, "write_state")
    gen = state.generator_state
    if not isinstance(gen, torch.Tensor) or gen.dtype != torch.uint8 or gen.ndim != 1:
        raise StateError("write_state: generator_state must be torch.Generator.get_state() (a 1-D uint8 tensor)")
    reserved = {GENERATOR_KEY, FRAMES_KEY}
    if reserved & set(state.tensors):
        raise StateError(f"write_state: family tensors may not be named {sorted(reserved)}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.tensors.items()}
    tensors[GENERATOR_KEY] = gen.detach().cpu().contiguous()
    if state.frames is not None:
        tensors[FRAMES_KEY] = state.frames.detach().cpu().contiguous()
    record = {"format_version": FORMAT_VERSION, "family": state.family, "model": vars(state.model),
              "seed": int(state.seed), "num_chunks": int(state.num_chunks), "num_frames": int(state.num_frames),
              "settings": state.settings, "has_frames": state.frames is not None, **state.extra}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # a dot name: ComfyUI's counters skip it
    try:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(record)})
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # anything, even an interrupt: leave no temporary file, then report
        tmp.unlink(missing_ok=True)
        raise
    return path.stat().st_size


def _not_a_state(path: Path, head: bytes, why: str) -> StateError:
    if head[:2] == b"PK" or head[:1] == b"\x80":
        why = "it is a pickle (torch.save/zip) file, which is never unpickled here"
    return StateError(f"{path.name}: not a stream state ({why}); pick a .safetensors file SaveStreamState wrote")


def read_header(path) -> dict:
    """The record of a state file, checked without reading any tensor: a safetensors header whose length
    and tensor offsets fit the file, with our metadata entry of a readable format and a known family.
    Returns {"record": ..., "tensors": header entries}."""
    path = Path(path)
    if not path.is_file():
        raise StateError(f"{path}: no such file; save a state with SaveStreamState first (it goes to the output "
                         f"folder) or upload one to the input folder")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _not_a_state(path, head, f"{size} bytes, shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > _HEADER_MAX:
            raise _not_a_state(path, head, "no safetensors header")
        if 8 + n > size:
            raise StateError(f"{path.name}: truncated ({size} bytes; its header alone needs {8 + n}): the copy or "
                             f"save was cut short; save the state again or use the previous step's state")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _not_a_state(path, head, "its safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise _not_a_state(path, head, "its safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if META_KEY not in meta:
        raise _not_a_state(path, head, f"a safetensors file without the '{META_KEY}' record, e.g. model weights")
    end = 0
    for key, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2 or entry.get("dtype") not in _SAFETENSORS_DTYPES):
            raise StateError(f"{path.name}: tensor '{key}' is stored as {entry!r}; a state holds only "
                             f"{sorted(_SAFETENSORS_DTYPES)} tensors: save the stream again")
        end = max(end, int(offsets[1]))
    if 8 + n + end > size:
        raise StateError(f"{path.name}: truncated ({size} bytes, its tensors need {8 + n + end}): the copy or save "
                         f"was cut short; save the state again or use the previous step's state")
    try:
        record = json.loads(meta[META_KEY])
    except json.JSONDecodeError:
        raise StateError(f"{path.name}: its '{META_KEY}' record is not JSON; save the stream again") from None
    version = record.get("format_version")
    if not isinstance(version, int) or version < OLDEST_READABLE:
        raise StateError(f"{path.name}: state format {version!r}; this pack reads formats {OLDEST_READABLE} to "
                         f"{FORMAT_VERSION}: save the stream again with this pack")
    if version > FORMAT_VERSION:
        raise StateError(f"{path.name}: state format {version} is newer than this pack reads (formats "
                         f"{OLDEST_READABLE} to {FORMAT_VERSION}): update ComfyUI-StreamingT2V to continue it")
    _family(str(record.get("family")), path.name)
    return {"record": _upgrade(record), "tensors": header}


def _upgrade(record: dict) -> dict:
    """An older readable format's record in today's shape (format 1 is the first: nothing to do yet)."""
    return record


def read_state(path) -> SavedStream:
    """A state file as a SavedStream, every check done before the tensors are read (memory-mapped by
    safetensors, then copied so the file is not held open)."""
    from safetensors.torch import load_file

    path = Path(path)
    checked = read_header(path)
    record = checked["record"]
    family = FAMILIES[record["family"]]
    tensors = {k: v.clone() for k, v in load_file(str(path)).items()}
    gen = tensors.pop(GENERATOR_KEY, None)
    if gen is None or gen.dtype != torch.uint8 or gen.ndim != 1:
        raise StateError(f"{path.name}: no generator state (a 1-D uint8 tensor '{GENERATOR_KEY}'); save the "
                         f"stream again with SaveStreamState")
    frames = tensors.pop(FRAMES_KEY, None)
    known = {"format_version", "family", "model", "seed", "num_chunks", "num_frames", "settings", "has_frames"}
    try:
        model = ModelIdentity(**record["model"])
        state = SavedStream(family=family.name, model=model, seed=int(record["seed"]), generator_state=gen,
                            num_chunks=int(record["num_chunks"]), num_frames=int(record["num_frames"]),
                            tensors=tensors, settings=dict(record["settings"]), frames=frames,
                            format_version=int(record["format_version"]),
                            extra={k: v for k, v in record.items() if k not in known})
    except (KeyError, TypeError, ValueError) as e:
        raise StateError(f"{path.name}: its record is incomplete ({e}); save the stream again") from None
    _check_family_fields(family, state.tensors, state.settings, path.name)
    if bool(record["has_frames"]) != (frames is not None):
        raise StateError(f"{path.name}: the record says has_frames={record['has_frames']} but the file "
                         f"{'lacks' if frames is None else 'holds'} them; save the stream again")
    return state


def make_generator(seed: int, state: torch.Tensor | None = None) -> torch.Generator:
    """The CPU generator every draw of a stream comes from: seeded, or continued from a saved state."""
    g = torch.Generator()
    if state is None:
        return g.manual_seed(int(seed))
    try:
        g.set_state(state)
    except RuntimeError as e:
        raise StateError(f"generator_state cannot be restored ({e}); it must be a CPU torch.Generator.get_state() "
                         "as SaveStreamState writes it") from None
    return g
