"""Time of the paper's metrics on CPU: a 240-frame 256x256 video (the paper's length and StreamingT2V's
stage-2 resolution), offline DIS flow at the official 720x720 working size.

    python bench/metrics_bench.py [--frames 240] [--res 256] [--size 720] [--flow dis]

Prints wall and CPU seconds for the flow + warp pass, SCuts, and the whole `compute_metrics` call.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from streamingt2v_core import metrics as M  # noqa: E402
from streamingt2v_core.metrics.flow import get_flow  # noqa: E402


def panning_video(frames: int, res: int, shift: int = 2, seed: int = 0) -> np.ndarray:
    """A smooth random texture under a camera panning `shift` pixels per frame (uint8)."""
    g = torch.Generator().manual_seed(seed)
    width = res + shift * frames + 1
    tex = F.interpolate(torch.rand(1, 3, res // 8, width // 8, generator=g), size=(res, width), mode="bicubic",
                        align_corners=False).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    return M.to_uint8_frames(np.stack([tex[:, shift * t:shift * t + res] for t in range(frames)]))


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, default=240)
    p.add_argument("--res", type=int, default=256)
    p.add_argument("--size", type=int, default=M.WORKING_SIZE)
    p.add_argument("--flow", default="dis", choices=["dis", "farneback"])
    args = p.parse_args()

    frames = panning_video(args.frames, args.res)
    flow = get_flow(args.flow)
    print(f"video {args.frames} frames at {args.res}x{args.res}, flow {flow.name} at {args.size}x{args.size}, "
          f"torch threads {torch.get_num_threads()}, cpu count {os.cpu_count()}")
    (we, mo), wall, cpu = timed(lambda: M.flow_pairs(frames, flow, args.size))
    print(f"flow + warp ({len(we)} pairs): {wall:.1f} s wall, {cpu:.1f} s CPU ({1000 * wall / len(we):.0f} ms/pair)")
    _, wall, cpu = timed(lambda: M.scene_cuts(frames))
    print(f"SCuts: {wall:.2f} s wall, {cpu:.2f} s CPU")
    r, wall, cpu = timed(lambda: M.compute_metrics(frames, flow=flow, size=args.size))
    print(f"compute_metrics total: {wall:.1f} s wall, {cpu:.1f} s CPU")
    print(f"result: mawe {r.mawe:.3f}, motion {r.motion:.2f} px (expected {2 * args.size / args.res:.2f}), "
          f"warp_error {r.warp_error:.2f}, scuts {r.scuts}")


if __name__ == "__main__":
    main()
