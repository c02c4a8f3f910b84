"""Random-weight models in the official layouts, for tests and the demo (no weights to download).

`regenerate(manifest)` rebuilds the oracle's tiny checkpoint bit for bit: the oracle was recorded from
the official code with weights drawn by this rule (see tests/data/oracle/README.md).
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import torch

SEED = 20240601
LOGIT_SCALE = 2.6592600345611572  # ln(1 / 0.07) in float32, kept as open_clip initialises it


def read_manifest(path) -> list:
    """(key, shape, dtype) rows of a `key<TAB>shape<TAB>dtype<TAB>numel` manifest."""
    rows = []
    with open(path) as f:
        next(f)
        for line in f:
            key, shape, dtype, _ = line.rstrip("\n").split("\t")
            rows.append((key, [int(x) for x in shape.strip("[]").split(",") if x.strip()], dtype))
    return rows


def regenerate(rows, seed: int = SEED) -> dict:
    """One generator, keys in sorted order: ndim >= 2 -> N(0,1)/sqrt(fan_in); 1-D `*weight` -> 1 + 0.1 N;
    other 1-D -> 0.05 N; scalar `*alpha` -> 0.75 + 0.25 N (non-zero, so the APM mixing is active);
    scalar `logit_scale` -> ln(1/0.07) without a draw."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape, dtype in sorted(rows):
        if dtype != "float32":
            raise ValueError(f"{key}: manifest dtype {dtype}, expected float32")
        out[key] = draw_tensor(key, shape, g)
    return out


def draw_tensor(key: str, shape, g: torch.Generator) -> torch.Tensor:
    """One tensor by the rule above, drawn from `g` (the StreamingSVD oracle uses the same rule)."""
    if len(shape) >= 2:
        t = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    elif len(shape) == 1:
        scale, offset = (0.1, 1.0) if key.endswith("weight") else (0.05, 0.0)
        t = offset + scale * torch.randn(shape, generator=g)
    elif key.endswith("alpha"):
        t = 0.75 + 0.25 * torch.randn((), generator=g)
    else:
        t = torch.tensor(LOGIT_SCALE)
    return t.float().contiguous()


def content_hash(state: dict) -> str:
    """sha256 over sorted keys, shapes, dtypes and raw bytes (the oracle README's hash)."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


# Content hash of the oracle's tiny StreamingT2V checkpoint (tests/data/oracle/tiny_manifest.tsv by this rule).
TINY_HASH = "d5e57138bf5c45af237b6a115c28875cc9646a9b69ee738d5ccfb9111ded6e5b"


def tiny_checkpoint_path() -> Path:
    """The tiny oracle checkpoint as a flat official-key safetensors file (+ its config beside it), rebuilt
    from its manifest once per machine (CACHE) and checked against TINY_HASH."""
    from safetensors.torch import save_file

    from tests.support.paths import CACHE, ORACLE

    path = CACHE / "tiny_streamingt2v.safetensors"
    stamp = CACHE / "tiny_streamingt2v.sha256"
    if not (path.exists() and stamp.exists() and stamp.read_text() == TINY_HASH):
        CACHE.mkdir(parents=True, exist_ok=True)
        state = regenerate(read_manifest(ORACLE / "tiny_manifest.tsv"))
        digest = content_hash(state)
        assert digest == TINY_HASH, f"tiny weights differ from the oracle's: {digest}"
        tmp = f"{path}.{os.getpid()}.tmp"  # the test processes of one run may build it side by side
        save_file(state, tmp)
        os.replace(tmp, path)
        stamp.write_text(digest)
    config = CACHE / "tiny_streamingt2v.json"
    shutil.copyfile(ORACLE / "tiny_config.json", f"{config}.{os.getpid()}.tmp")
    os.replace(f"{config}.{os.getpid()}.tmp", config)
    return path
