"""StreamingSVD's own weights: the CAM (`controlnet.*`), the 13 mergers and the conditioner's VAE encoder
(the concat image's encoder, `conditioner.embedders.3.encoder.*`), read from the official `model.safetensors`
(12.5 GB, fp32) or from a CAM-only file written by `write_cam_file`.

The SVD-XT base (UNet, VAE, CLIP vision) in the same file is ComfyUI's to load; here only these 800 + 108
keys are read, through `safetensors.safe_open` (memory-mapped; the rest of the file is never touched).
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping

import torch

from ..common.state_dict import misshaped_error
from ..common.weights import CheckpointError
from .config import MERGER_NAMES

# Key prefixes in model.safetensors.
CAM_PREFIX = "controlnet."
FRAME_ENCODER_PREFIX = "controlnet.controlnet_cond_embedding."
BASE_PREFIX = "model.diffusion_model."
MERGER_PREFIX = BASE_PREFIX + "cross_attention_merger_"
# The conditioner's own VAE encoder makes the concat latent officially (ComfyUI would use the first stage's);
# only its encoder and quant_conv are used (its decoder is dead weight).
CONCAT_ENCODER_PREFIX = "conditioner.embedders.3.encoder."
CAM_FILE_FORMAT = "streamingsvd-cam"  # metadata "streamingt2v" of a CAM-only file

OFFICIAL_FIX = ("use the StreamingSVD model.safetensors (https://huggingface.co/PAIR/StreamingSVD, file "
                "model.safetensors, 12.5 GB) or a CAM file written from it by "
                "`streamingt2v_core.svd.weights.write_cam_file`")
_REDOWNLOAD = "the file is truncated or corrupt; delete it and download it again"
_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
_DTYPE_NAMES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
                "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def merger_prefix(name) -> str:
    """File prefix of merger `name` (0..11 for the skips, "mid" for the middle block)."""
    if name == "mid":
        return MERGER_PREFIX + "mid_block."
    return f"{MERGER_PREFIX}input_blocks.{int(name)}."


@dataclass
class StreamingSVDParts:
    """What StreamingSVD adds to SVD-XT, as state dicts (views of the memory-mapped file unless cast).

    `cam_unet`: the CAM's UNet part with ComfyUI UNetModel names (`time_embed.*`, `label_emb.*`,
    `input_blocks.*`, `middle_block.*`); `frame_encoder`: the CAM's control-frame encoder
    (`conv_in`, `blocks.*`, `norms.*`, `conv_out`); `mergers`: {0..11, "mid"} -> the merger's
    `temporal_transformer.*` state dict."""

    cam_unet: dict[str, torch.Tensor]
    frame_encoder: dict[str, torch.Tensor]
    mergers: dict[object, dict[str, torch.Tensor]]
    source: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    # the conditioner's VAE encoder (`encoder.*`, `quant_conv.*`), as stored (fp32 in both file kinds)
    concat_encoder: dict[str, torch.Tensor] = field(default_factory=dict)

    def numel(self) -> int:
        parts = [self.cam_unet, self.frame_encoder, *self.mergers.values(), self.concat_encoder]
        return sum(t.numel() for part in parts for t in part.values())


# --------------------------------------------------------------------------------------------------
# The expected layout (reference manifest: the controlnet.* and merger rows of the real model.safetensors)

MANIFEST = Path(__file__).with_name("streaming_svd_cam_manifest.tsv")
CONCAT_ENCODER_MANIFEST = Path(__file__).with_name("streaming_svd_concat_encoder_manifest.tsv")


def read_shape_manifest(path) -> dict[str, tuple[int, ...]]:
    """key -> shape of a key/shape manifest (TSV: key, shape as [a, b], dtype, numel; one header line)."""
    shapes = {}
    with open(path, encoding="utf-8") as f:
        next(f)
        for line in f:
            key, shape, _dtype, _numel = line.rstrip("\n").split("\t")
            shapes[key] = tuple(int(x) for x in shape.strip("[]").split(",") if x.strip())
    return shapes


@lru_cache(maxsize=1)
def official_shapes() -> dict[str, tuple[int, ...]]:
    """key -> shape of every CAM and merger tensor of the real model.safetensors (file key names)."""
    return read_shape_manifest(MANIFEST)


def expected_keys() -> set[str]:
    """The CAM and merger file keys the loader reads (the same names in the real and in the oracle's tiny
    checkpoint)."""
    return set(official_shapes())


def concat_encoder_shapes() -> dict[str, tuple[int, ...]]:
    """key -> shape of the conditioner's VAE encoder (`encoder.*`, `quant_conv.*`) in the real file."""
    return read_shape_manifest(CONCAT_ENCODER_MANIFEST)


def file_shapes() -> dict[str, tuple[int, ...]]:
    """Every key (with its real shape) the loader reads: CAM, mergers and the concat encoder."""
    return {**official_shapes(), **concat_encoder_shapes()}


# --------------------------------------------------------------------------------------------------
# Reading


def _open(path: Path):
    from safetensors import safe_open

    return safe_open(str(path), framework="pt", device="cpu")


def _sniff(path: Path) -> None:
    """Safetensors or a clear CheckpointError (empty, truncated header, a torch.save .ckpt, other bytes)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; {OFFICIAL_FIX}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty; {_REDOWNLOAD}")
    with open(path, "rb") as f:
        head = f.read(16)
    # a header length's low byte may be 0x80 (a pickle's first byte): safetensors wins when its '{' is there
    if head[8:9] != b"{" and (head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"):
        raise CheckpointError(
            f"{path}: this is a torch.save checkpoint (.ckpt/.pth), not StreamingSVD's model.safetensors; the "
            f"StreamingT2V streaming_t2v.ckpt (ModelScope base) belongs to the LoadStreamingT2V loader. Fix: "
            f"{OFFICIAL_FIX}")
    if len(head) < 9 or head[8:9] != b"{":
        raise CheckpointError(f"{path}: not a safetensors file (header bytes {head[:8]!r}); it may be corrupt "
                              f"or an HTML error page: {_REDOWNLOAD}. Expected: {OFFICIAL_FIX}")
    header_len = int.from_bytes(head[:8], "little")
    if header_len + 8 > size:
        raise CheckpointError(f"{path}: safetensors header says {header_len} bytes but the file has {size}; "
                              f"{_REDOWNLOAD}")


def _header(path: Path) -> dict:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        try:
            return json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path}: the safetensors header is not valid JSON ({exc}); {_REDOWNLOAD}") from exc


def _check_layout(path: Path, header: dict) -> None:
    """Key set and data extent against what the loader expects, from the header alone (nothing is read)."""
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    keys = set(tensors)
    ours = {k for k in keys if k.startswith(CAM_PREFIX) or k.startswith(MERGER_PREFIX)}
    if not ours:
        if any(k.startswith(BASE_PREFIX) for k in keys) and any(k.startswith("conditioner.") for k in keys):
            raise CheckpointError(
                f"{path}: this is a plain SVD checkpoint: it has no CAM (no 'controlnet.*' keys) and no mergers; "
                f"StreamingSVD needs its own weights. Fix: {OFFICIAL_FIX} (it holds SVD-XT too, so it can "
                f"replace the SVD checkpoint)")
        if any(k.startswith(("base_model.", "unet.", "resampler.", "image_encoder.")) for k in keys):
            raise CheckpointError(f"{path}: this is a StreamingT2V (ModelScope base) file, not StreamingSVD; "
                                  f"it belongs to the LoadStreamingT2V loader. Fix: {OFFICIAL_FIX}")
        shown = ", ".join(sorted(keys)[:5])
        raise CheckpointError(f"{path}: no StreamingSVD CAM or merger keys in this file (keys like {shown}); "
                              f"Fix: {OFFICIAL_FIX}")
    want = expected_keys()
    missing = sorted(want - ours)
    unexpected = sorted(ours - want)
    if missing or unexpected:
        lines = [f"{path}: the CAM / merger weights do not match StreamingSVD: {len(missing)} missing, "
                 f"{len(unexpected)} unexpected keys."]
        for title, items in (("missing", missing), ("unexpected", unexpected)):
            if items:
                lines.append(f"  {title}: {len(items)}" + (" (first 20)" if len(items) > 20 else ""))
                lines += [f"    {k}" for k in items[:20]]
        lines.append(f"Fix: {OFFICIAL_FIX}; an interrupted download or conversion leaves keys out.")
        raise CheckpointError("\n".join(lines))
    end = max((v["data_offsets"][1] for v in tensors.values()), default=0)
    size = path.stat().st_size
    with open(path, "rb") as f:
        data_start = 8 + int.from_bytes(f.read(8), "little")
    if data_start + end > size:
        raise CheckpointError(f"{path}: the tensors end at byte {data_start + end} but the file has {size} bytes; "
                              f"{_REDOWNLOAD}")


def _cam_channels(cam_shapes: Mapping[str, tuple]) -> dict[object, int]:
    """Output channels of each CAM input block (0..11) and of the middle block: what each merger sees."""
    out: dict[object, int] = {}
    for i in range(12):
        for suffix in ("0.out_layers.3.weight", "0.op.weight", "0.weight"):
            key = f"input_blocks.{i}.{suffix}"
            if key in cam_shapes:
                out[i] = int(cam_shapes[key][0])
                break
    key = "middle_block.2.out_layers.3.weight"
    if key in cam_shapes:
        out["mid"] = int(cam_shapes[key][0])
    return out


def _check_shapes(path: Path, file_shapes: Mapping[str, tuple], base_shapes: Mapping[str, tuple]) -> None:
    """Mis-shaped tensors: the CAM's UNet has the base UNet's configuration (`from_unet`), so with the base in
    the same file each CAM tensor must have its base twin's shape, else (a CAM-only file) the real layout's
    where the file is at real size; the frame encoder and the mergers must fit the CAM they read."""
    from .cam import CAMFrameEncoder
    from .merger import SkipMerger

    rows = []
    cam = {k[len(CAM_PREFIX):]: s for k, s in file_shapes.items()
           if k.startswith(CAM_PREFIX) and not k.startswith(FRAME_ENCODER_PREFIX)}
    official = official_shapes()
    if base_shapes:
        reference = {k: base_shapes[k] for k in cam if k in base_shapes}
        origin = BASE_PREFIX
    elif 10 * sum(tuple(s) != official.get(CAM_PREFIX + k) for k, s in cam.items()) < len(cam):
        # over 90% real shapes: a real-size CAM file with a few bad tensors (a smaller model, like the
        # oracle's tiny one, differs in most of them and is checked for consistency only)
        reference = {k: official[CAM_PREFIX + k] for k in cam}
        origin = "the official layout "
    else:
        reference, origin = {}, ""
    for k, shape in sorted(cam.items()):
        if k in reference and tuple(shape) != tuple(reference[k]):
            rows.append((CAM_PREFIX + k, list(reference[k]), list(shape)))
    enc = {k[len(FRAME_ENCODER_PREFIX):]: s for k, s in file_shapes.items() if k.startswith(FRAME_ENCODER_PREFIX)}
    rows += [(FRAME_ENCODER_PREFIX + k, e, f) for k, e, f in CAMFrameEncoder.shape_problems(enc)]
    channels = _cam_channels(cam)
    for name in MERGER_NAMES:
        prefix = merger_prefix(name)
        sub = {k[len(prefix):]: s for k, s in file_shapes.items() if k.startswith(prefix)}
        rows += [(prefix + k, e, f) for k, e, f in SkipMerger.shape_problems(sub, channels.get(name))]
    if rows:
        raise misshaped_error(f"{path} (checked against {origin or 'the CAM itself'})", rows, f"Fix: {OFFICIAL_FIX}")


def _dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype]
    raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(_DTYPE_NAMES)} or a torch.dtype")


def check_file(path) -> dict[str, tuple[int, ...]]:
    """Validate a StreamingSVD model.safetensors or CAM-only file from its header alone (no tensor is read):
    CheckpointError for a plain SVD checkpoint, a StreamingT2V file, a truncated file, missing, unexpected,
    mis-shaped or non-float CAM / merger tensors. Returns file key -> shape of the 800 CAM and merger keys."""
    path = Path(path).expanduser()
    _sniff(path)
    header = _header(path)
    _check_layout(path, header)
    shapes = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    base = {k[len(BASE_PREFIX):]: s for k, s in shapes.items()
            if k.startswith(BASE_PREFIX) and not k.startswith(MERGER_PREFIX)}
    _check_shapes(path, shapes, base)
    bad = sorted(k for k in expected_keys() if header[k]["dtype"] not in ("F32", "F16", "BF16", "F64"))
    if bad:
        shown = ", ".join(f"{k} ({header[k]['dtype']})" for k in bad[:10])
        raise CheckpointError(f"{path}: {len(bad)} CAM / merger tensor(s) are not floating point: {shown}; "
                              f"Fix: use the original, unquantised file. {OFFICIAL_FIX}")
    encoder = set(concat_encoder_shapes())
    missing = sorted(encoder - set(shapes))
    if missing:
        raise CheckpointError(
            f"{path}: the conditioner's VAE encoder ({CONCAT_ENCODER_PREFIX}encoder.*, quant_conv.*, which encodes "
            f"the SVD image for every chunk) is missing: {len(missing)} of {len(encoder)} keys, e.g. {missing[0]}. "
            f"Fix: {OFFICIAL_FIX} (a CAM file from an older converter lacks it: write it again)")
    bad = sorted(k for k in encoder if header[k]["dtype"] not in ("F32", "F16", "BF16", "F64"))
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} conditioner-encoder tensor(s) are not floating point, e.g. "
                              f"{bad[0]} ({header[bad[0]]['dtype']}); Fix: {OFFICIAL_FIX}")
    return {k: shapes[k] for k in sorted(expected_keys() | encoder)}


def read_cam_and_mergers(path, dtype=None) -> StreamingSVDParts:
    """The CAM and mergers of a StreamingSVD `model.safetensors` or CAM-only file, memory-mapped (only
    these tensors are read; with `dtype` they are cast, one at a time). Raises CheckpointError as
    `check_file` does (naming the file, the fault and the fix)."""
    from safetensors import SafetensorError

    path = Path(path).expanduser()
    check_file(path)
    cast = _dtype(dtype)
    cam_unet, frame_encoder = {}, {}
    mergers: dict[object, dict[str, torch.Tensor]] = {name: {} for name in MERGER_NAMES}
    prefixes = [(merger_prefix(n), n) for n in MERGER_NAMES]
    encoder = {}
    try:
        with _open(path) as f:
            metadata = dict(f.metadata() or {})
            for key in sorted(concat_encoder_shapes()):  # kept as stored: the official encodes in fp32
                encoder[key[len(CONCAT_ENCODER_PREFIX):]] = f.get_tensor(key)
            for key in sorted(expected_keys()):
                t = f.get_tensor(key)
                if cast is not None and t.dtype != cast:
                    t = t.to(cast)
                if key.startswith(FRAME_ENCODER_PREFIX):
                    frame_encoder[key[len(FRAME_ENCODER_PREFIX):]] = t
                elif key.startswith(CAM_PREFIX):
                    cam_unet[key[len(CAM_PREFIX):]] = t
                else:
                    for prefix, name in prefixes:
                        if key.startswith(prefix):
                            mergers[name][key[len(prefix):]] = t
                            break
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: could not be read as safetensors ({exc}); {_REDOWNLOAD}") from exc
    return StreamingSVDParts(cam_unet, frame_encoder, mergers, str(path), metadata, encoder)


# --------------------------------------------------------------------------------------------------
# Writing


def write_safetensors_stream(dst, specs: list[tuple[str, list, torch.dtype]], tensors: Iterable[torch.Tensor],
                             metadata: Mapping[str, str] | None = None) -> int:
    """Write a safetensors file whose tensors come one at a time: `specs` (name, shape, dtype) fixes the
    header first, `tensors` yields them in the same order (each cast to its spec's dtype). Holds one
    tensor at a time. Returns the bytes written."""
    if sys.byteorder != "little":
        raise RuntimeError("safetensors files are little-endian; writing on a big-endian machine is not supported")
    header: dict[str, object] = {"__metadata__": dict(metadata or {})}
    offset = 0
    for name, shape, dtype in specs:
        nbytes = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _ST_DTYPES[dtype], "shape": [int(s) for s in shape],
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    count = 0
    with open(dst, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for (name, shape, dtype), t in zip(specs, tensors):
            if tuple(t.shape) != tuple(shape):
                raise ValueError(f"{name}: tensor shape {list(t.shape)} differs from its header entry {list(shape)}")
            data = t.detach().to(device="cpu", dtype=dtype).contiguous()
            if data.numel():
                f.write(memoryview(data.reshape(-1).view(torch.uint8).numpy()))
            count += 1
    if count != len(specs):
        raise ValueError(f"{dst}: {len(specs)} tensors announced, {count} written")
    return 8 + len(blob) + offset


def write_cam_file(src, dst, dtype="fp16") -> Path:
    """A CAM-only file from StreamingSVD's model.safetensors (or another CAM file): the 800 CAM and merger
    tensors under their original names, cast to `dtype` ("fp16", "bf16", "fp32"), and the conditioner's VAE
    encoder kept in fp32 (as the official runs it; 137 MB), streamed one at a time. About 1.62 GB with fp16
    for the real model."""
    from safetensors import SafetensorError

    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    target = _dtype(dtype) or torch.float32
    shapes = check_file(src)
    keys = sorted(shapes)
    name = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[target]
    metadata = {"format": "pt", "streamingt2v": CAM_FILE_FORMAT, "dtype": name, "source": src.name}
    tmp = dst.with_name(dst.name + f".{os.getpid()}.tmp")
    try:
        with _open(src) as f:
            kinds = [torch.float32 if k.startswith(CONCAT_ENCODER_PREFIX) else target for k in keys]
            write_safetensors_stream(tmp, [(k, list(shapes[k]), t) for k, t in zip(keys, kinds)],
                                     (f.get_tensor(k) for k in keys), metadata)
        os.replace(tmp, dst)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{src}: could not be read as safetensors ({exc}); {_REDOWNLOAD}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return dst
