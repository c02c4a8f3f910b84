"""Command line: `python -m streamingt2v_core.metrics VIDEO.mp4 [--prompt TEXT] [--json]`; the video is
read with PyAV."""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from .clip_score import DEFAULT_CLIP_ARCH, OpenCLIPScorer
from .drift import DRIFT_STEP, DRIFT_WINDOW, check_drift_window
from .flow import FLOW_METHODS, RAFT_WEIGHTS_ENV, get_flow
from .mawe import MAWE_COEFF, WORKING_SIZE
from .report import WINDOW_START, WINDOW_STEP, compute_metrics
from .video import read_video


def _border_list(text: str) -> list[int]:
    """`16,32,48` -> [16, 32, 48] (argparse type for --seam-borders)."""
    try:
        borders = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of frame indices, e.g. 16,32,48")
    if not borders:
        raise argparse.ArgumentTypeError("give at least one frame index, e.g. 16,32,48")
    return borders


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streamingt2v_core.metrics",
                                description="MAWE, SCuts and CLIP score of a video (StreamingT2V, Table 1), its seam "
                                            "score at chunk borders and its colour drift.")
    p.add_argument("video", help="video file (read with PyAV)")
    p.add_argument("--prompt", default=None, help="text for the CLIP score")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--per-pair", action="store_true", help="with --json: also per-pair and per-frame values")
    p.add_argument("--clip-model", default=None, help="OpenCLIP weights file (state dict) for the CLIP score")
    p.add_argument("--clip-arch", default=DEFAULT_CLIP_ARCH,
                   help=f"OpenCLIP model name or config JSON path (default {DEFAULT_CLIP_ARCH})")
    p.add_argument("--flow", default="auto", choices=FLOW_METHODS,
                   help="optical flow: auto = RAFT-large if weights are given, else OpenCV DIS; farneback is "
                        "weaker (zero flow on smooth, low-gradient frames)")
    p.add_argument("--raft-weights", default=None,
                   help=f"torchvision raft_large state dict (or set {RAFT_WEIGHTS_ENV}); never downloaded")
    p.add_argument("--size", type=int, default=WORKING_SIZE, help="working size for the flow (official 720)")
    p.add_argument("--coeff", type=float, default=MAWE_COEFF, help="MAWE coefficient (official 9.5)")
    p.add_argument("--window-start", type=int, default=WINDOW_START)
    p.add_argument("--window-step", type=int, default=WINDOW_STEP)
    p.add_argument("--device", default="cpu", help="torch device for RAFT and CLIP")
    seams = p.add_mutually_exclusive_group()
    seams.add_argument("--seam-chunk", type=int, default=None,
                       help="seam borders from chunks of N frames: N, N+(N-overlap), ... (default: detect them)")
    seams.add_argument("--seam-borders", type=_border_list, default=None,
                       help="seam borders as frame indices, e.g. 16,32,48 (border b = change from frame b-1 to b)")
    p.add_argument("--seam-overlap", type=int, default=None, help="with --seam-chunk: frames chunks share (default 0)")
    p.add_argument("--drift-window", type=int, default=DRIFT_WINDOW, help="colour drift window in frames")
    p.add_argument("--drift-step", type=int, default=DRIFT_STEP, help="colour drift window step in frames")
    args = p.parse_args(argv)
    if args.seam_overlap is not None and args.seam_chunk is None:
        p.error("--seam-overlap needs --seam-chunk")

    check_drift_window(args.drift_window, args.drift_step)  # before the flow weights and the decoding
    flow = get_flow(args.flow, args.raft_weights, args.device)  # fail on bad weights before decoding
    clip = OpenCLIPScorer.from_file(args.clip_model, args.clip_arch, args.device) if args.clip_model else None
    frames, fps = read_video(args.video)
    result = compute_metrics(frames, prompt=args.prompt, clip=clip, flow=flow, size=args.size, coeff=args.coeff,
                             fps=fps, window_start=args.window_start, window_step=args.window_step,
                             seam_chunk=args.seam_chunk, seam_overlap=args.seam_overlap, seam_borders=args.seam_borders,
                             drift_window=args.drift_window, drift_step=args.drift_step)
    if args.json:
        print(json.dumps(result.to_dict(per_pair=args.per_pair), allow_nan=False))
    else:
        print(result.report())
    return 0
