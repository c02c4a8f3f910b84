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

`--native` instead runs ComfyUI's own sampling in-process (the ComfyUI of tools/bootstrap.sh, or
$COMFYUI_PATH) on one long latent through core's context windows with the same windows three ways: core's
`pyramid` and `overlap-linear` fuse methods and randomized blending (comfy_bridge/context_fuse.py), on two
denoisers: `smooth`, the chunk-local stand-in as a ComfyUI model (each window's x0 = its x_t box-filtered
over its own frames only, through model_function_wrapper), and `wan`, the tiny random-weight Wan 2.1
(tools/make_tiny_wan.py) that ComfyUI's own loader builds. It prints the seam score
(streamingt2v_core.metrics.seams, on the latent frames: borders = the frame transitions inside the
window overlaps) and the time per sampler step (best of --repeats) for each.

usage: python bench/seams.py --native [--denoiser smooth wan] [--latent-frames 21] [--window 9] [--overlap 4]
       [--steps 10] [--size 24x40] [--repeats 5]
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
    ap.add_argument("--native", action="store_true", help="core ComfyUI context windows (see the docstring)")
    ap.add_argument("--denoiser", nargs="+", default=None, choices=["smooth", "tiny", "wan"])
    ap.add_argument("--frames", type=int, default=88)
    ap.add_argument("--steps", type=int, default=None, help="default 30 (10 with --native)")
    ap.add_argument("--latent-frames", type=int, default=21, help="--native: latent frames (21 = 81 video frames)")
    ap.add_argument("--window", type=int, default=9, help="--native: context length in latent frames")
    ap.add_argument("--native-overlap", type=int, default=4, help="--native: context overlap in latent frames")
    ap.add_argument("--size", default="24x40", help="--native: latent height x width")
    ap.add_argument("--repeats", type=int, default=5, help="--native: timed runs per method (best is shown)")
    ap.add_argument("--strength", type=int, default=600, help="SDEdit start step of 1000 (official 600)")
    ap.add_argument("--chunk", type=int, default=24)
    ap.add_argument("--overlap", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.native:
        args.steps = args.steps or 10
        for name in args.denoiser or ["smooth", "wan"]:
            if name == "tiny":
                ap.error("--native takes the denoisers smooth and wan")
            native_report(name, args)
        return 0
    args.steps = args.steps or 30
    for name in args.denoiser or ["smooth"]:
        if name == "wan":
            ap.error("the wan denoiser needs --native")
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


def native_windows(model, args):
    """The same static windows three ways: core's pyramid and overlap-linear, and randomized blending."""
    from tests.support.comfy_inproc import import_pack

    cf = import_pack("comfy_bridge.context_fuse", missing=SystemExit)
    import comfy.context_windows as cw

    def core(fuse):
        patched = model.clone()
        patched.model_options["context_handler"] = cw.IndexListContextHandler(
            context_schedule=cw.get_matching_context_schedule(cw.ContextSchedules.STATIC_STANDARD),
            fuse_method=cw.get_matching_fuse_method(fuse), context_length=args.window,
            context_overlap=args.native_overlap, context_stride=1, closed_loop=False, dim=2)
        cw.create_prepare_sampling_wrapper(patched)
        return patched

    blend = cf.randomized_blend_windows(model, args.window, args.native_overlap, seed=33,
                                        frame_dim_choice="auto", length_unit="latent frames")
    return {"core pyramid": core("pyramid"), "core overlap-linear": core("overlap-linear"),
            "randomized blending": blend}


def tiny_wan():
    """The tiny Wan 2.1 t2v of the real-server tests, built by ComfyUI's own loader from its state dict."""
    import comfy.sd
    from tools import make_tiny_wan

    return comfy.sd.load_diffusion_model_state_dict(make_tiny_wan.draw(make_tiny_wan.wan_shapes(),
                                                                       make_tiny_wan.WAN_SEED))


def window_local_smoother(model, width: int = 5):
    """The chunk-local stand-in as a ComfyUI MODEL: the model is never called; x0 of each window = its x_t
    box-filtered over the window's own frames (edges replicated), so windows disagree near their ends."""
    patched = model.clone()

    def x0(apply_model, call):
        x = call["input"]
        pad = width // 2
        padded = torch.cat([x[:, :, :1].expand(-1, -1, pad, -1, -1), x, x[:, :, -1:].expand(-1, -1, pad, -1, -1)], 2)
        return padded.unfold(2, width, 1).mean(-1)

    patched.set_model_unet_function_wrapper(x0)
    return patched


def overlap_borders(windows: list[list[int]]) -> list[int]:
    """Frame transitions b (change from frame b-1 to b) into, inside and out of every window overlap."""
    borders = set()
    ordered = sorted(windows, key=lambda w: w[0])
    for prev, cur in zip(ordered, ordered[1:]):
        borders.update(range(max(cur[0], 1), prev[-1] + 2))
    return sorted(borders)


def native_report(name, args) -> None:
    import_comfy_or_exit()
    import comfy.sample
    from streamingt2v_core.metrics.seams import seam_score_from_changes

    h, w = (int(v) for v in args.size.lower().split("x"))
    base = tiny_wan()
    model = window_local_smoother(base) if name == "smooth" else base
    methods = native_windows(model, args)
    g = torch.Generator().manual_seed(0)
    positive = [[0.1 * torch.randn(1, 16, 4096, generator=g), {}]]
    negative = [[torch.zeros(1, 16, 4096), {}]]
    clean = moving_pattern(args.latent_frames, h, w).repeat(1, 4, 1, 1, 1)  # 16 latent channels
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(7))
    handler = methods["core pyramid"].model_options["context_handler"]
    windows = [list(win.index_list) if hasattr(win, "index_list") else list(win)
               for win in handler.context_schedule.func(args.latent_frames, handler, {})]
    borders = overlap_borders(windows)

    def sample(patched):
        return comfy.sample.sample(patched, noise, args.steps, 5.0, "euler", "simple", positive, negative, clean,
                                   denoise=0.6, seed=7, disable_pbar=True)

    times, outs = {m: [] for m in methods}, {}
    for _ in range(args.repeats):  # interleaved, so a slow moment of the machine hits every method alike
        for method, patched in methods.items():
            t0 = time.perf_counter()
            outs[method] = sample(patched)
            times[method].append((time.perf_counter() - t0) / args.steps)
    print(f"native seams [{name}]: {args.latent_frames} latent frames {h}x{w}, windows {windows[0][0]}..: "
          f"{[(win[0], win[-1]) for win in windows]} (length {args.window}, overlap {args.native_overlap}), "
          f"{args.steps} euler steps, denoise 0.6, cfg 5, best of {args.repeats}")
    fuse_us = {}
    for method, patched in methods.items():  # the fuse method's own cost per window call, without the model
        hd = patched.model_options["context_handler"]
        hd._step = 1
        calls = [dict(idxs=list(win), full_length=args.latent_frames, handler=hd, sigma=None) for win in windows]
        t0 = time.perf_counter()
        for _ in range(200):
            for kw in calls:
                hd.fuse_method.func(len(kw["idxs"]), **kw)
        fuse_us[method] = (time.perf_counter() - t0) / (200 * len(calls)) * 1e6
    print("fuse weights per window call: " + ", ".join(f"{m} {us:.1f} us" for m, us in fuse_us.items()))
    print(f"{'method':22s} {'seam (overlaps)':>16s} {'seam (detected)':>16s} {'s/step':>8s} {'vs pyramid':>11s}")
    ref = min(times["core pyramid"])
    for method, out in [("input (no sampling)", clean)] + list(outs.items()):
        changes = (out[:, :, 1:] - out[:, :, :-1]).abs().mean(dim=(0, 1, 3, 4)).double().numpy()
        given = seam_score_from_changes(changes, borders=borders)
        found = seam_score_from_changes(changes)
        step = f"{min(times[method]):8.3f} {min(times[method]) / ref - 1:+10.1%}" if method in times else ""
        print(f"{method:22s} {given.score:16.3f} {found.score:9.3f} (p{found.period}) {step}")


def import_comfy_or_exit():
    from tests.support.comfy_inproc import import_comfy

    return import_comfy(missing=SystemExit)


if __name__ == "__main__":
    raise SystemExit(main())
