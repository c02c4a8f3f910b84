"""`python -m streamingt2v_core.svd.convert model.safetensors streamingsvd_cam_fp16.safetensors`: StreamingSVD's
own weights (CAM, mergers, conditioner encoder) as one small file for models/streamingsvd, so a user who keeps
SVD-XT elsewhere need not keep the 12.5 GB file (weights.write_cam_file)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..common.weights import CheckpointError
from .weights import write_cam_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streamingt2v_core.svd.convert",
        description="Write StreamingSVD's CAM, skip mergers and conditioner encoder from model.safetensors into "
                    "a CAM-only safetensors file (about 1.6 GB with fp16) for models/streamingsvd.")
    parser.add_argument("src", help="StreamingSVD's model.safetensors (or another CAM file)")
    parser.add_argument("dst", help="the CAM file to write, e.g. models/streamingsvd/streamingsvd_cam_fp16.safetensors")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16",
                        help="dtype of the CAM and mergers (default fp16; the conditioner encoder stays fp32)")
    parser.add_argument("--force", action="store_true", help="replace DST if it exists")
    args = parser.parse_args(argv)
    dst = Path(args.dst)
    if dst.exists() and not args.force:
        print(f"error: {dst} exists; pass --force to replace it", file=sys.stderr)
        return 2
    if not dst.parent.is_dir():
        print(f"error: {dst.parent} is not a folder; create it first", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        write_cam_file(args.src, dst, dtype=args.dtype)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {dst} ({dst.stat().st_size / 1e9:.2f} GB, {args.dtype}) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
