#!/usr/bin/env python
"""Rebuild the tiny MS-Vid2Vid-XL refiner of the oracle from its manifests (no weights are downloaded).

The oracle's weight rule (oracle/refiner/README.md): a CPU generator seeded per component; keys visited in
Python sorted() order; each float32 tensor of shape S is randn(S)/sqrt(prod(S[1:])) when it has >= 2 dims,
1 + 0.1*randn for a 1-d key ending in "weight", else 0.05*randn; UNet tensors are rounded to fp16 and back.

usage: python tools/make_tiny_refiner.py OUT_DIR [--format official|converted] [--verify]
  official  : non_ema_0035000.pth, open_clip_pytorch_model.bin, v2-1_512-ema-pruned.ckpt (the official layout)
  converted : unet.safetensors, text_encoder.safetensors, vae.safetensors
Both also get tiny_v2v_config.json (head size of the tiny UNet, which shapes cannot tell).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data" / "refiner"
if str(REPO) not in sys.path:  # run as a script (python tools/make_tiny_refiner.py); imported as tools.make_tiny_refiner
    sys.path.insert(0, str(REPO))
from streamingt2v_core.enhancers.ms_vid2vid.files import CONVERTED_FILES, OFFICIAL_FILES  # noqa: E402
COMPONENTS = {  # manifest, config key, fp16 rounding
    "unet": ("tiny_v2v_manifest.tsv", "unet", True),
    "text_encoder": ("tiny_v2v_text_encoder_manifest.tsv", "text_encoder", False),
    "autoencoder": ("tiny_v2v_autoencoder_manifest.tsv", "autoencoder", False),
}


def read_manifest(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line]


def regenerate(rows: list[dict], seed: int, fp16_round: bool) -> dict[str, torch.Tensor]:
    """Draw every tensor of a manifest by the oracle rule; returns them in manifest order."""
    shapes = {r["key"]: tuple(json.loads(r["shape"])) for r in rows}
    g = torch.Generator().manual_seed(seed)
    drawn = {}
    for key in sorted(shapes):
        shape = shapes[key]
        noise = torch.randn(shape, generator=g)
        if len(shape) >= 2:
            value = noise / math.sqrt(math.prod(shape[1:]))
        elif len(shape) == 1 and key.endswith("weight"):
            value = 1.0 + 0.1 * noise
        else:
            value = 0.05 * noise
        drawn[key] = value.half().float() if fp16_round else value
    return {k: drawn[k].contiguous() for k in shapes}


def verify(rows: list[dict], state: dict[str, torch.Tensor]) -> list[str]:
    return [r["key"] for r in rows if hashlib.sha256(state[r["key"]].numpy().tobytes()).hexdigest() != r["sha256_f32le"]]


def tiny_component(name: str, data: Path = DATA) -> dict[str, torch.Tensor]:
    manifest, cfg_key, fp16 = COMPONENTS[name]
    config = json.loads((data / "tiny_v2v_config.json").read_text())
    return regenerate(read_manifest(data / manifest), config[cfg_key]["seed"], fp16)


def write(out: Path, fmt: str = "converted", data: Path = DATA, check: bool = False,
          components=tuple(COMPONENTS)) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name in components:
        state = tiny_component(name, data)
        if check:
            bad = verify(read_manifest(data / COMPONENTS[name][0]), state)
            if bad:
                raise SystemExit(f"{name}: {len(bad)} tensors differ from the manifest sha256 (e.g. {bad[0]})")
        if fmt == "official":
            target = out / OFFICIAL_FILES[name]
            torch.save({"state_dict": state} if name == "autoencoder" else state, target)
        else:
            from safetensors.torch import save_file

            target = out / CONVERTED_FILES[name]
            save_file(state, str(target))
    shutil.copyfile(data / "tiny_v2v_config.json", out / "tiny_v2v_config.json")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--format", choices=("official", "converted"), default="converted")
    ap.add_argument("--verify", action="store_true", help="compare every tensor with the manifest sha256")
    args = ap.parse_args(argv)
    write(args.out, args.format, check=args.verify)
    print(f"wrote tiny refiner ({args.format}) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
