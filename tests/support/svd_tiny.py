"""The StreamingSVD oracle's tiny checkpoint (official `model.safetensors` layout, random weights), rebuilt
from its manifest by the oracle's weight rule and checked against the oracle's content hash.

The rule is the one of the StreamingT2V oracle (tests/support/tiny.py, `regenerate`): one generator seeded
20240601, keys in sorted order, ndim >= 2 -> N(0,1)/sqrt(fan_in), 1-D `*weight` -> 1 + 0.1 N, other 1-D ->
0.05 N, 0-d `*alpha` -> 0.75 + 0.25 N, 0-d `logit_scale` -> ln(1/0.07). Here it is drawn one tensor at a
time and streamed to disk, so the 2 GB of weights are never held in memory (the other engineers' tests
share the machine's memory).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch

from tests.support.paths import CACHE, DATA
from tests.support.tiny import SEED, draw_tensor, read_manifest

SVD_DATA = DATA / "svd"
MANIFEST = SVD_DATA / "tiny_manifest.tsv"


def expected_hash() -> str:
    """The oracle's content hash (first field of weights_sha256.txt)."""
    return (SVD_DATA / "weights_sha256.txt").read_text().split()[0]


def draw(key: str, shape: list[int], g: torch.Generator) -> torch.Tensor:
    """One tensor by the oracle rule (the same draws as tests.support.tiny.regenerate for this key)."""
    return draw_tensor(key, shape, g)


def _hash_update(h, key: str, t: torch.Tensor) -> None:
    # The oracle's hash: per key (sorted) its name, str(list(shape)), str(dtype), raw bytes.
    h.update(key.encode())
    h.update(str(list(t.shape)).encode())
    h.update(str(t.dtype).encode())
    h.update(t.numpy().tobytes())


def build(dst: Path) -> str:
    """Write the tiny checkpoint to `dst` (streamed); returns its content hash."""
    from streamingt2v_core.svd.weights import write_safetensors_stream

    rows = sorted(read_manifest(MANIFEST))
    for key, _shape, dtype in rows:
        if dtype != "float32":
            raise ValueError(f"{key}: manifest dtype {dtype}, expected float32")
    g = torch.Generator().manual_seed(SEED)
    h = hashlib.sha256()

    def tensors():
        for key, shape, _ in rows:
            t = draw(key, shape, g)
            _hash_update(h, key, t)
            yield t

    write_safetensors_stream(dst, [(k, s, torch.float32) for k, s, _ in rows], tensors(), {"format": "pt"})
    return h.hexdigest()


def tiny_svd_checkpoint() -> Path:
    """Path of the tiny `model.safetensors` (about 2 GB), built once into
    `<cache>/svd_tiny/<hash>/model.safetensors` (cache: $STREAMINGT2V_TEST_CACHE or .cache) and verified
    against weights_sha256.txt; later calls (and later runs) reuse it once its stamp says it was verified."""
    want = expected_hash()
    folder = CACHE / "svd_tiny" / want[:16]
    path = folder / "model.safetensors"
    stamp = folder / "content.sha256"
    if path.is_file() and stamp.is_file() and stamp.read_text().strip() == f"{want} {path.stat().st_size}":
        return path
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"model.safetensors.{os.getpid()}.tmp"
    try:
        digest = build(tmp)
        if digest != want:
            raise AssertionError(f"the rebuilt tiny StreamingSVD weights differ from the oracle's: {digest} != {want}")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    stamp.write_text(f"{want} {path.stat().st_size}")
    return path


# Sparse safetensors files for the loader's tests: a header with the given shapes and zero data that takes no
# disk (the file is truncated to its length), so the real 12.5 GB layout can be tested too.

_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I8": 1}


def sparse_file(path, shapes: dict, dtype: str = "F16", dtypes: dict | None = None, cut: int = 0):
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for key in sorted(shapes):
        dt = (dtypes or {}).get(key, dtype)
        n = math.prod(shapes[key]) * _SIZES[dt]
        header[key] = {"dtype": dt, "shape": list(shapes[key]), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        f.truncate(8 + len(blob) + offset - cut)
    return path


def tiny_shapes(prefixes=("controlnet.", "model.diffusion_model.", "conditioner.embedders.3.encoder.")) -> dict:
    return {k: tuple(s) for k, s, _ in read_manifest(MANIFEST) if k.startswith(prefixes)}
