"""Seams at chunk borders (the paper's Fig. 4 as a number), on a smoothly moving synthetic latent video.

Refines the same video three ways with the tiny refiner and prints, for each, the mean absolute
frame-to-frame change at chunk borders divided by the same inside chunks (1.0 = no visible seam):
  (a) independent chunks: each chunk noised and denoised on its own, joined with a hard cut mid-overlap;
  (b) shared noise only: one whole-video latent, noise and solver, but a fixed cut mid-overlap;
  (c) randomized blending: as (b) with a random cut per overlap and step (StreamingT2V).
"border" = the transition at the middle of each overlap (where (a) and (b) cut); "overlap" = every
transition inside an overlap.

Two denoisers: `tiny`, the tiny MS-Vid2Vid refiner (random weights: its x0 is mostly noise, which hides
seams), and `smooth`, a stand-in that only sees its chunk (x0 = the chunk's x_t / alpha smoothed over
frames, edges replicated), so that, like a real model, its predictions near chunk ends differ from its
neighbour's. Same solver, schedule, noise and blending for both.

usage: python bench/seams.py [--denoiser smooth tiny] [--frames 88] [--steps 30] [--strength 600]
(the tiny model takes about 4 min per 56 frames x 10 steps on one CPU thread)
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streamingt2v_core.blending.cuts import boundary_overlaps, chunk_starts  # noqa: E402
from streamingt2v_core.blending.sdedit import refine_latents  # noqa: E402


def moving_pattern(frames: int, h: int = 10, w: int = 16) -> torch.Tensor:
    """A latent video of drifting sinusoids: every frame differs a little from the last."""
    f = torch.arange(frames).view(-1, 1, 1)
    y = torch.arange(h).view(1, -1, 1)
    x = torch.arange(w).view(1, 1, -1)
    chans = [torch.sin(2 * math.pi * (x - 0.25 * f) / 8 + c) + 0.5 * torch.cos(2 * math.pi * (y + 0.15 * f) / 6 - c)
             for c in range(4)]
    return torch.stack(chans)[None].float()  # (1, 4, F, h, w)


class ChunkLocalSmoother:
    """Refiner stand-in: x0 of a chunk = its x_t / alpha_t box-filtered over frames inside the chunk only."""

    family = "ms-vid2vid"
    prediction_type = "sample"

    def __init__(self, width: int = 17):
        from streamingt2v_core.enhancers.ms_vid2vid.schedule import VPSchedule

        self.schedule, self.width = VPSchedule(), width

    def check_latent_size(self, h, w):
        pass

    def alpha_sigma(self, t):
        a, s = self.schedule.alpha_sigma(torch.as_tensor(t).reshape(-1)[:1])
        return float(a), float(s)

    def sample(self, noised, x0_fn, steps, t_start, seed=0, brownian_noise=None):
        from streamingt2v_core.enhancers.ms_vid2vid.solver import sdedit_solve  # the MS-Vid2Vid solver, as `tiny`

        return sdedit_solve(self.schedule, noised, x0_fn, steps, t_start, seed, brownian_noise)

    def predict_x0(self, x_t, t, context, negative_context, guidance=7.5, rescale=0.2, rows_together=True):
        a, _ = self.alpha_sigma(t)
        x = x_t / a
        pad = self.width // 2
        padded = torch.cat([x[:, :, :1].expand(-1, -1, pad, -1, -1), x, x[:, :, -1:].expand(-1, -1, pad, -1, -1)], 2)
        return padded.unfold(2, self.width, 1).mean(-1)


def seam_ratios(video: torch.Tensor, starts: list[int], overlaps: list[int]) -> tuple[float, float]:
    change = (video[:, :, 1:] - video[:, :, :-1]).abs().mean(dim=(0, 1, 3, 4))  # transition f -> f+1
    mid = {s + o // 2 - 1 for s, o in zip(starts[1:], overlaps)}
    inside_ov = {f for s, o in zip(starts[1:], overlaps) for f in range(s - 1, s + o)}
    inner = [f for f in range(change.numel()) if f not in inside_ov]
    base = change[inner].mean()
    return float(change[sorted(mid)].mean() / base), float(change[sorted(inside_ov)].mean() / base)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--denoiser", nargs="+", default=["smooth"], choices=["smooth", "tiny"])
    ap.add_argument("--frames", type=int, default=88)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--strength", type=int, default=600, help="SDEdit start step of 1000 (official 600)")
    ap.add_argument("--chunk", type=int, default=24)
    ap.add_argument("--overlap", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    for name in args.denoiser:
        if name == "tiny":
            from tools import make_tiny_refiner
            from streamingt2v_core.enhancers.load import load_refiner

            with tempfile.TemporaryDirectory() as tmp:
                refiner = load_refiner(make_tiny_refiner.write(Path(tmp), "converted"))
        else:
            refiner = ChunkLocalSmoother()
        report(name, refiner, args)


def report(name, refiner, args) -> None:
    g = torch.Generator().manual_seed(0)
    ctx, neg = torch.randn(1, 77, 1024, generator=g), torch.zeros(1, 77, 1024)
    clean = moving_pattern(args.frames)
    t0 = args.strength - 1
    alpha, sigma = refiner.alpha_sigma(t0)
    starts = chunk_starts(args.frames, args.chunk, args.overlap)
    clen = min(args.chunk, args.frames)
    overlaps = boundary_overlaps(starts, clen)
    kw = dict(chunk=args.chunk, overlap=args.overlap, steps=args.steps, t_start=t0)

    results = {}
    t_start = time.time()
    # (a) independent chunks: own noise and own Brownian tree per chunk, hard cut mid-overlap
    parts = []
    for k, s in enumerate(starts):
        noise = torch.randn(clean[:, :, s:s + clen].shape, generator=torch.Generator().manual_seed(100 + k))
        parts.append(refine_latents(refiner, alpha * clean[:, :, s:s + clen] + sigma * noise, ctx, neg,
                                    seed=100 + k, **kw))
    video = parts[0]
    for k in range(1, len(starts)):
        keep = starts[k] + overlaps[k - 1] // 2  # first frame taken from chunk k
        video = torch.cat([video[:, :, :keep], parts[k][:, :, keep - starts[k]:]], dim=2)
    results["(a) independent chunks"] = seam_ratios(video, starts, overlaps)

    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(7))
    noised = alpha * clean + sigma * noise
    fixed = torch.tensor([[o // 2 for o in overlaps]] * args.steps)
    results["(b) shared noise, fixed cut"] = seam_ratios(refine_latents(refiner, noised, ctx, neg, offsets=fixed,
                                                                        seed=7, **kw), starts, overlaps)
    results["(c) randomized blending"] = seam_ratios(refine_latents(refiner, noised, ctx, neg, seed=7, **kw),
                                                     starts, overlaps)
    results["input (no refinement)"] = seam_ratios(clean, starts, overlaps)

    print(f"seams [{name}]: {args.frames} frames, chunks at {starts} (chunk {clen}, overlaps {overlaps}), "
          f"{args.steps} steps from t={t0}, {time.time() - t_start:.0f} s")
    print(f"{'method':32s} {'border/inside':>14s} {'overlap/inside':>15s}")
    for method, (border, over) in results.items():
        print(f"{method:32s} {border:14.3f} {over:15.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
