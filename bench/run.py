"""StreamingT2V benchmark: time, memory and FLOPs of stage 2 (streaming) and stage 3 (refiner).

    OMP_NUM_THREADS=1 python bench/run.py [--device cpu|cuda] [--json OUT] [--quick | --full] [--real]
                                         [--peak-tflops 989] [--steps N] [--dtype fp32|bf16|fp16]

Default: about 3 minutes on one loaded CPU thread; --quick under one; --full (growth to 1024 frames,
refiner to 256) about 7.

Sections (each printed as it finishes, all collected in --json):
  env       torch, device, threads, machine load (`uptime`) before and after
  step      tiny model: one stage-2 denoising step (CAM + base UNet on both CFG rows, guidance, DDIM update)
            and one whole chunk (--steps DDIM steps + VAE decode of its 16 frames)
  split     cost of one step by part, each timed by calling the module directly: CAM, base UNet (with the
            CAM features given), DDIM + guidance bookkeeping; and the per-stream / per-frame parts: APM
            (encode_anchor), text encoder, VAE decode per frame
  options   time cost and output difference of each memory option (streamingt2v_core.common.memory and the
            bench-only bench/memory_tricks.py) on the tiny model
  growth    a stream grown from 16 to 64, 256 (--full: 1024) frames with 1 DDIM step per chunk (memory does not depend
            on the step count; 50 steps would only take longer): host RSS, peak RSS, peak accelerator memory,
            and host bytes per added frame against the float32 frames the stream keeps
  refiner   tiny refiner: time per solver step over the whole video and memory vs frames (latent only), with
            all chunks in one UNet batch (the default) and one chunk per call (chunk_batch=1)
  estimate  memory of the real-size models at 256x256 (stage 2) and 1280x720 (refiner), from meta-device runs
            (memory.activation_peak_bytes) and parameter counts, for the plans in bench/README.md
  flops     UNet FLOPs per step of the real-size architecture, counted with torch.utils.flop_counter on the
            meta device (no weights allocated); with --real on a GPU, the achieved fraction of --peak-tflops
  real      (--real) the real-size architecture with random weights: per step and per chunk on a GPU,
            a single denoiser call on CPU

The tiny models are the oracle's (tests/data/oracle, tests/data/refiner), at their 64x64 / 80x128 sizes.
"""
from __future__ import annotations

import argparse
import ctypes
import functools
import gc
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "bench"))

import memory_tricks  # noqa: E402
from core_bench import denoiser_inputs, real_size_model, tiny_model  # noqa: E402

import streamingt2v_core as st  # noqa: E402
from streamingt2v_core.common import memory  # noqa: E402
from streamingt2v_core.common.dtypes import DTYPES  # noqa: E402
from streamingt2v_core.common.guidance import cfg as guided  # noqa: E402
from streamingt2v_core.common.memory import LiveTensorBytes  # noqa: E402
from streamingt2v_core.t2v.memory import OFFLOAD_PARTS  # noqa: E402
from streamingt2v_core.t2v.model import build_on_meta  # noqa: E402
from streamingt2v_core.t2v.extend import StreamConditioning, extend_video, generate_chunk, make_scheduler  # noqa: E402

MiB = 1024 ** 2
GiB = 1024 ** 3
PEAK_TFLOPS = {"h100": 989.0, "h200": 989.0}  # bf16 dense


# -- measuring --------------------------------------------------------------------------------------

def is_cuda(device) -> bool:
    return str(device).startswith("cuda")


def sync(device) -> None:
    if is_cuda(device):
        torch.cuda.synchronize()


def rss_now() -> int:
    """Resident set size now, bytes (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return rss_peak()


def rss_peak() -> int:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb if platform.system() == "Darwin" else kb * 1024


def accel_peak(device) -> int | None:
    return torch.cuda.max_memory_allocated() if is_cuda(device) else None


def reset_accel_peak(device) -> None:
    if is_cuda(device):
        torch.cuda.reset_peak_memory_stats()


def timeit(fn, device, repeat: int = 3, warmup: int = 1) -> float:
    """Median wall seconds of `repeat` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def load() -> list:
    return [round(x, 2) for x in os.getloadavg()]


def row(results: dict, section: str, label: str, **values) -> None:
    results.setdefault(section, []).append({"label": label, **values})
    parts = []
    for k, v in values.items():
        if v is None:
            continue
        if k.endswith("_ms"):
            parts.append(f"{v:10.2f} ms")
        elif k.endswith("_mib"):
            parts.append(f"{k[:-4]} {v:9.1f} MiB")
        elif k.endswith("_kib"):
            parts.append(f"{k[:-4]} {v:8.1f} KiB")
        elif k.endswith("gib"):
            parts.append(f"{k[:-3] or ''}{v:7.3f} GiB")
        elif k.endswith("tflop"):
            parts.append(f"{v:9.3f} TFLOP")
        elif isinstance(v, float):
            parts.append(f"{k} {v:.4g}")
        else:
            parts.append(f"{k} {v}")
    print(f"  {label:<46} " + "  ".join(parts), flush=True)


# -- stage 2 ----------------------------------------------------------------------------------------

def step_seconds(model, frames, cond, device, repeat: int, guidance: float = 7.5) -> tuple[float, int | None]:
    """Median wall seconds of one denoising step as the core runs it: the time between `generate_chunk`'s
    `on_step` calls (CFG rows batched, the CAM's frame features computed once per chunk). The first step also
    holds the chunk's set-up (frame features, initial noise), so it is the warm-up and left out. Also the
    accelerator peak at the last step (before the chunk's VAE decode; None on the CPU)."""
    stamps, peak = [], [None]

    def on_step(_done, _total):
        sync(device)
        stamps.append(time.perf_counter())
        peak[0] = accel_peak(device)

    generate_chunk(model, frames, cond, steps=repeat + 1, guidance=guidance,
                   generator=torch.Generator().manual_seed(0), on_step=on_step)
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:])), peak[0]


def bench_step(model, device, args, results) -> None:
    cfg = model.config
    sample, ehs, cond = denoiser_inputs(model, device)
    t = make_scheduler(model).timesteps(50)[25]
    emb = model.encode_cond_frames(cond)
    frames = torch.rand(16, 3, cfg.height, cfg.width, generator=torch.Generator().manual_seed(1))
    sc = StreamConditioning.build(model, "a benchmark", "", anchor=frames[0])
    step_s, _peak = step_seconds(model, frames, sc, device, args.repeat)
    flops = count_flops(lambda: model.predict_noise(sample, t, ehs, None, emb))
    row(results, "step", f"tiny step (2x{cfg.chunk_frames} frames {cfg.height}x{cfg.width})", time_ms=step_s * 1e3,
        gflop=round(flops / 1e9, 2), achieved_gflops=round(flops / step_s / 1e9, 1))
    # before the frame features were computed once per chunk: the CAM's frame encoder ran every step, both rows
    encoder_s = timeit(lambda: model.encode_cond_frames(cond), device, args.repeat)
    row(results, "step", "tiny step, CAM frame encoder every step (before)", time_ms=(step_s + encoder_s) * 1e3,
        gflop=round(count_flops(lambda: model.predict_noise(sample, t, ehs, cond)) / 1e9, 2))
    chunk_s = timeit(lambda: generate_chunk(model, frames, sc, steps=args.steps, generator=torch.Generator().manual_seed(0)),
                     device, repeat=1)
    row(results, "step", f"tiny chunk ({args.steps} steps + decode 16 frames)", time_ms=chunk_s * 1e3,
        per_step_ms=(chunk_s / args.steps) * 1e3)


def bench_split(model, device, args, results) -> None:
    """Each part timed by calling it directly with the inputs it sees inside one step."""
    cfg = model.config
    dt = model.dtype
    sample, ehs, cond = denoiser_inputs(model, device)
    sample, ehs, cond = sample.to(dt), ehs.to(dt), cond.to(dt)
    t = torch.tensor(501, device=device)
    sched = make_scheduler(model)
    rep = args.repeat
    full = timeit(lambda: model.predict_noise(sample, t, ehs, cond), device, rep)
    cam = timeit(lambda: model.unet(sample, t, ehs[:, :cfg.text_tokens], cond), device, rep)
    skips, mid = model.unet(sample, t, ehs[:, :cfg.text_tokens], cond)
    base = timeit(lambda: model.base_model(sample, t, ehs, skips, mid), device, rep)
    eps = model.predict_noise(sample, t, ehs, cond).float()
    lat = sample[:1].float()
    g = torch.Generator().manual_seed(0)

    def bookkeeping():
        eps_u, eps_c = eps.chunk(2)
        return sched.step(guided(eps_c, eps_u, 7.5), 501, lat, 50, generator=g)

    ddim = timeit(bookkeeping, device, rep)
    step_total = full + ddim
    for name, sec in (("CAM (2 rows x 8 frames)", cam), ("base UNet incl. mergers + APM mixing", base),
                      ("DDIM + guidance bookkeeping", ddim)):
        row(results, "split", name, time_ms=sec * 1e3, share=round(sec / step_total, 3))
    row(results, "split", "= one step (denoiser call + bookkeeping)", time_ms=step_total * 1e3,
        parts_sum_ms=(cam + base + ddim) * 1e3)
    anchor = torch.rand(1, 3, cfg.height, cfg.width, device=device) * 2 - 1
    apm = timeit(lambda: model.encode_anchor(anchor), device, rep)
    row(results, "split", "APM encode_anchor (per stream and per prompt)", time_ms=apm * 1e3)
    ids = model.tokenize(["", "a benchmark prompt"])
    text = timeit(lambda: model.encode_text(ids), device, rep)
    row(results, "split", "text encoder, 2 prompts (per prompt)", time_ms=text * 1e3)
    z = sample[:1].float()
    vae = timeit(lambda: model.decode_latents(z), device, rep)
    row(results, "split", "VAE decode per frame (slices of 8)", time_ms=vae * 1e3 / cfg.chunk_frames)


def bench_options(model, device, args, results) -> None:
    """Time cost of each memory option on one tiny denoiser call (CFG batch); their memory effect at real
    size is in the estimate section."""
    import copy

    sample, ehs, cond = denoiser_inputs(model, device)
    t = torch.tensor(501, device=device)
    call = lambda m: m.predict_noise(sample, t, ehs, cond)  # noqa: E731
    rep = max(1, args.repeat - 1)
    ref = call(model)
    base = timeit(lambda: call(model), device, rep)
    row(results, "options", "none (plain SDPA, whole feed-forward)", time_ms=base * 1e3)
    memory_tricks.set_attention_slicing(model, 16)
    sec = timeit(lambda: call(model), device, rep)
    err = (call(model) - ref).abs().max().item()
    memory_tricks.set_attention_slicing(model, None)
    row(results, "options", "attention in query slices of 16", time_ms=sec * 1e3, max_abs_diff=err)
    memory.set_feed_forward_chunking(model, 512)
    sec = timeit(lambda: call(model), device, rep)
    err = (call(model) - ref).abs().max().item()
    memory.set_feed_forward_chunking(model, None)
    row(results, "options", "feed-forward in chunks of 512 tokens", time_ms=sec * 1e3, max_abs_diff=err)
    q = copy.deepcopy(model)
    memory_tricks.fp8_weights(q.base_model)
    memory_tricks.fp8_weights(q.unet)
    sec = timeit(lambda: call(q), device, rep)
    out = call(q)
    row(results, "options", "fp8 weights (base UNet + CAM), upcast at use", time_ms=sec * 1e3,
        rel_l2_err=round(((out - ref).norm() / ref.norm()).item(), 4),
        weights_mib=memory_tricks.parameter_bytes(q.base_model) / MiB + memory_tricks.parameter_bytes(q.unet) / MiB,
        fp32_weights_mib=(memory_tricks.parameter_bytes(model.base_model) / MiB
                          + memory_tricks.parameter_bytes(model.unet) / MiB))
    del q
    off = memory_tricks.swap_cam_offload(model, device, OFFLOAD_PARTS)
    with off:
        sec = timeit(lambda: call(model), device, rep)
        err = (call(model) - ref).abs().max().item()
    row(results, "options", "sequential offload with CAM/base swap", time_ms=sec * 1e3, max_abs_diff=err,
        moves=len(off.moves))


def settle() -> None:
    """Let freed memory go back to the OS before reading RSS (glibc keeps freed chunks otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def slope(xs, ys) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def bench_growth(model, device, args, results) -> None:
    """Grows one stream and measures at each milestone. The frames kept are what a ChunkAssembler keeps:
    16 initial + 8 new per chunk, float32 (3, H, W) on the host. Besides RSS, the bytes of tensors created
    during the stream and still referenced are tracked exactly (memory.LiveTensorBytes)."""
    cfg = model.config
    h, w = cfg.height, cfg.width
    guidance = 7.5 if is_cuda(device) else args.growth_guidance
    first = torch.rand(16, 3, h, w, generator=torch.Generator().manual_seed(2))
    kept = [first]
    n_kept = [16]
    milestones = sorted(m for m in args.frames if m >= 16)
    marks = {}
    tracker = LiveTensorBytes()

    def record():
        frames = n_kept[0]
        if frames in milestones and frames not in marks:
            sync(device)
            settle()
            marks[frames] = {"rss": rss_now(), "peak_rss": rss_peak(), "accel": accel_peak(device),
                             "live": tracker.live + first.numel() * 4,
                             "transient": tracker.peak - tracker.live}  # working set above what is kept
            tracker.peak = tracker.live  # the next milestone's peak covers its own chunks only

    def on_chunk(_c, fresh):
        kept.append(fresh)
        n_kept[0] += fresh.shape[0]
        record()

    reset_accel_peak(device)
    record()
    new_per_chunk = cfg.chunk_frames - cfg.cond_frames
    chunks = (max(milestones) - 16) // new_per_chunk
    print(f"  1 DDIM step per chunk, guidance {guidance} ({'both CFG rows' if guidance != 1 else 'conditional row only: the CPU run measures host memory, which CFG does not change'})")
    if chunks > 0:
        t0 = time.perf_counter()
        with tracker:
            extend_video(model, first, chunks, "a growing video", steps=1, guidance=guidance, seed=0, on_chunk=on_chunk)
        per_chunk = (time.perf_counter() - t0) / chunks
        row(results, "growth", "chunk at 1 DDIM step (incl. decode)", time_ms=per_chunk * 1e3, chunks=chunks)
    frame_bytes = 3 * h * w * 4
    done = [f for f in milestones if f in marks]
    for frames in done:
        m = marks[frames]
        row(results, "growth", f"{frames:5d} frames", rss_mib=m["rss"] / MiB, peak_rss_mib=m["peak_rss"] / MiB,
            accel_peak_mib=None if m["accel"] is None else m["accel"] / MiB,
            live_tensors_mib=m["live"] / MiB, transient_mib=m["transient"] / MiB if frames > 16 else None,
            kept_frames_mib=frames * frame_bytes / MiB)
    if len(done) >= 2:
        rss_slope = slope(done, [marks[f]["rss"] for f in done])
        live_slope = slope(done, [marks[f]["live"] for f in done])
        results["growth_per_frame"] = {"rss_bytes": rss_slope, "live_tensor_bytes": live_slope, "frame_bytes": frame_bytes}
        print(f"  host bytes per added frame: RSS {rss_slope / 1024:.1f} KiB, live tensors {live_slope / 1024:.2f} KiB; "
              f"a float32 frame at {w}x{h} is {frame_bytes / 1024:.0f} KiB (at 256x256: {256 * 256 * 12 / 1024:.0f} KiB)")
        if is_cuda(device):
            peaks = [marks[f]["accel"] for f in done]
            print(f"  accelerator peak across lengths: {min(peaks) / MiB:.1f} .. {max(peaks) / MiB:.1f} MiB")
    del kept


# -- stage 3 ----------------------------------------------------------------------------------------

def tiny_refiner(device, dtype):
    try:
        from tools import make_tiny_refiner
    except ImportError as e:
        return None, f"refiner tools not importable ({e})"
    with tempfile.TemporaryDirectory(prefix="tiny_v2v_") as tmp:  # the weights are read in; the files can go
        return st.load_refiner(make_tiny_refiner.write(Path(tmp), "converted"), device=device, dtype=dtype), None


def bench_refiner(device, dtype, args, results) -> None:
    refine_latents = st.refine_latents
    source = "streamingt2v_core.refine_latents"
    refiner, why = tiny_refiner(device, dtype)
    if refiner is None:
        print(f"  skipped: {why}")
        results["refiner_skipped"] = why
        return
    print(f"  using {source}; tiny MS-Vid2Vid UNet, latent 4x10x16 per frame (80x128 px), chunk 24 overlap 8, "
          "1 solver step; 'live' = peak bytes of tensors made during the call (memory.LiveTensorBytes)")
    ctx = torch.randn(1, 77, 1024, generator=torch.Generator().manual_seed(3)).to(device)
    neg = torch.zeros_like(ctx)
    steps = 1
    per_frame = 4 * 10 * 16 * 4
    for batch in (1, None) if not args.quick else (1,):
        lengths = args.refiner_frames if batch == 1 else [f for f in args.refiner_frames if f <= 64]
        for frames in lengths:
            lat = torch.randn(1, 4, frames, 10, 16, generator=torch.Generator().manual_seed(4)).to(device)
            reset_accel_peak(device)
            sync(device)
            tracker = LiveTensorBytes()
            t0 = time.perf_counter()
            with tracker:
                refine_latents(refiner, lat, ctx, neg, steps=steps, seed=0, chunk_batch=batch)
            sync(device)
            sec = (time.perf_counter() - t0) / steps
            row(results, "refiner", f"{frames:5d} frames, chunk_batch={batch or 'all'}", step_ms=sec * 1e3,
                latent_kib=frames * per_frame / 1024, live_peak_mib=tracker.peak / MiB,
                accel_peak_mib=None if accel_peak(device) is None else accel_peak(device) / MiB)
            del lat
    rows = {r["label"]: r for r in results.get("refiner", [])}
    # from 64 frames on every chunk has its full 24 frames, so the growth left is the whole-video state
    ones = [f for f in args.refiner_frames if f >= 64 and f"{f:5d} frames, chunk_batch=1" in rows]
    if len(ones) >= 2:
        b = slope(ones, [rows[f"{f:5d} frames, chunk_batch=1"]["live_peak_mib"] * MiB for f in ones])
        results["refiner_live_bytes_per_frame"] = b
        print(f"  chunk_batch=1: live bytes grow {b / 1024:.1f} KiB per frame = {b / per_frame:.1f} whole-video latents (fp32)")
    del refiner


# -- FLOPs and the real-size model --------------------------------------------------------------------

def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    fc = FlopCounterMode(display=False)
    with fc:
        fn()
    return fc.get_total_flops()


def real_flops(results) -> dict:
    """FLOPs of one CFG step (2 rows) of the official architecture at 256x256, on the meta device."""
    model = build_on_meta(st.load_config(None)).to(torch.bfloat16)
    cfg = model.config
    sf = cfg.vae_scale_factor
    with torch.device("meta"):
        sample = torch.empty(2, cfg.latent_channels, cfg.chunk_frames, cfg.height // sf, cfg.width // sf,
                             dtype=torch.bfloat16)
        ehs = torch.empty(2, cfg.text_tokens + cfg.apm_tokens, cfg.context_dim, dtype=torch.bfloat16)
        cond = torch.empty(2, cfg.cond_frames, 3, cfg.height, cfg.width, dtype=torch.bfloat16)
        t = torch.tensor(501)
        z = torch.empty(1, cfg.latent_channels, cfg.height // sf, cfg.width // sf, dtype=torch.bfloat16)
        img = torch.empty(1, 3, cfg.height, cfg.width, dtype=torch.bfloat16)
    text = cfg.text_tokens
    out = {}
    out["cam_frame_encoder"] = count_flops(lambda: model.unet.encode_cond(cond))
    out["cam"] = count_flops(lambda: model.unet(sample, t, ehs[:, :text], cond)) - out["cam_frame_encoder"]
    skips, mid = model.unet(sample, t, ehs[:, :text], cond)
    out["base"] = count_flops(lambda: model.base_model(sample, t, ehs, skips, mid))
    out["vae_frame"] = count_flops(lambda: model.vae.decode(z))
    out["apm"] = count_flops(lambda: model.resampler(model.image_encoder(img)[:, None]))
    n = {name: sum(p.numel() for p in getattr(model, name).parameters())
         for name in ("base_model", "unet", "image_encoder", "resampler", "text_encoder", "vae")}
    row(results, "flops", "CAM frame encoder, 2 rows x 8 frames (once per chunk now, was every step)",
        tflop=out["cam_frame_encoder"] / 1e12)
    for name, label in (("cam", "CAM without its frame encoder, 2 rows x 8 frames"),
                        ("base", "base UNet, 2 rows x 16 frames")):
        row(results, "flops", label, tflop=out[name] / 1e12)
    row(results, "flops", "= UNet FLOPs per step (CFG)", tflop=(out["cam"] + out["base"]) / 1e12)
    row(results, "flops", "VAE decode, per frame", tflop=out["vae_frame"] / 1e12)
    row(results, "flops", "APM (image encoder + resampler), per call", tflop=out["apm"] / 1e12)
    row(results, "flops", "parameters (B)", **{k: round(v / 1e9, 3) for k, v in n.items()})
    del model
    unet = meta_refiner_unet()
    if unet is None:
        return out
    out["refiner_chunk"] = count_flops(refiner_chunk_call(unet, 2))
    row(results, "flops", "refiner UNet, one chunk (2 rows x 24 frames 1280x720)", tflop=out["refiner_chunk"] / 1e12)
    return out


def bench_real(device, args, results, flops) -> None:
    dtype = DTYPES[args.real_dtype or ("bf16" if device == "cpu" else args.dtype if args.dtype != "fp32" else "bf16")]
    t0 = time.perf_counter()
    model = real_size_model(device, dtype)
    print(f"  real-size model, random weights, {dtype}: built in {time.perf_counter() - t0:.1f} s", flush=True)
    sample, ehs, cond = denoiser_inputs(model, device)
    sample, ehs, cond = sample.to(dtype), ehs.to(dtype), cond.to(dtype)
    t = torch.tensor(501, device=device)
    unet_flops = flops["cam"] + flops["base"]
    if not is_cuda(device):  # CPU: one call is minutes
        reset_accel_peak(device)
        sec = timeit(lambda: model.predict_noise(sample, t, ehs, cond), device, repeat=1, warmup=0)
        row(results, "real", "denoiser call (2x16x256^2, cold)", time_ms=sec * 1e3, peak_rss_mib=rss_peak() / MiB,
            achieved_tflops=round(unet_flops / sec / 1e12, 4))
        return
    frames = torch.rand(16, 3, 256, 256)
    sc = StreamConditioning.build(model, "a benchmark", "", anchor=frames[0])
    reset_accel_peak(device)
    emb = model.encode_cond_frames(cond)
    step, step_peak = step_seconds(model, frames, sc, device, args.repeat)
    row(results, "real", f"step (CFG, 2x16 frames 256x256, {dtype})", time_ms=step * 1e3,
        accel_peak_mib=step_peak / MiB, achieved_tflops=round(unet_flops / step / 1e12, 1),
        fraction_of_peak=round(unet_flops / step / 1e12 / args.peak_tflops, 3))
    cam = timeit(lambda: model.unet(sample, t, ehs[:, :77], None, emb), device, args.repeat)
    skips, mid = model.unet(sample, t, ehs[:, :77], None, emb)
    base = timeit(lambda: model.base_model(sample, t, ehs, skips, mid), device, args.repeat)
    row(results, "real", "CAM (frame features given)", time_ms=cam * 1e3,
        fraction_of_peak=round(flops["cam"] / cam / 1e12 / args.peak_tflops, 3))
    row(results, "real", "base UNet", time_ms=base * 1e3,
        fraction_of_peak=round(flops["base"] / base / 1e12 / args.peak_tflops, 3))
    z = sample[:1].float()
    vae = timeit(lambda: model.decode_latents(z), device, args.repeat)
    row(results, "real", "VAE decode per frame", time_ms=vae * 1e3 / 16)
    reset_accel_peak(device)
    chunk = timeit(lambda: generate_chunk(model, frames, sc, steps=args.steps, generator=torch.Generator().manual_seed(0)),
                   device, repeat=1)
    row(results, "real", f"chunk ({args.steps} steps + decode)", time_ms=chunk * 1e3, accel_peak_mib=accel_peak(device) / MiB)
    if args.real_growth:
        bench_growth(model, device, argparse.Namespace(frames=[16, 64, 256], growth_guidance=7.5), results)


# -- memory estimate of the real-size models (meta device) -------------------------------------------

def weight_bytes(module, dtype_bytes: int = 2, fp8: bool = False) -> int:
    """Parameter bytes in a dtype of `dtype_bytes`; with fp8, Linear/Conv weights take 1 byte a value plus a
    float32 scale per output channel (memory_tricks.fp8_weights), the rest stays in the dtype."""
    total = 0
    for m in module.modules():
        for name, p in m.named_parameters(recurse=False):
            if fp8 and name == "weight" and isinstance(m, memory_tricks.FP8_LAYERS):
                total += p.numel() + p.shape[0] * 4
            else:
                total += p.numel() * dtype_bytes
    return total


def _gib(b) -> float:
    return round(b / GiB, 3)


def stage2_estimate(results) -> dict:
    model = build_on_meta(st.load_config(None)).to(torch.float16)
    cfg = model.config
    sf = cfg.vae_scale_factor
    with torch.device("meta"):
        sample = torch.empty(2, 4, cfg.chunk_frames, cfg.height // sf, cfg.width // sf, dtype=torch.float16)
        ehs = torch.empty(2, cfg.text_tokens + cfg.apm_tokens, cfg.context_dim, dtype=torch.float16)
        cond = torch.empty(2, cfg.cond_frames, 3, cfg.height, cfg.width, dtype=torch.float16)
        t = torch.tensor(501)
        z8 = torch.empty(8, 4, cfg.height // sf, cfg.width // sf, dtype=torch.float16)
        img = torch.empty(1, 3, cfg.height, cfg.width, dtype=torch.float16)
        ids = torch.zeros(2, cfg.text_tokens, dtype=torch.long)
    step = lambda: model.predict_noise(sample, t, ehs, cond)  # noqa: E731
    act = {"step": memory.activation_peak_bytes(step)}
    memory.set_feed_forward_chunking(model, memory.FEED_FORWARD_CHUNK)
    act["step_ff_chunks"] = memory.activation_peak_bytes(step)
    memory.set_feed_forward_chunking(model, None)
    act["step_math_attention"] = memory.activation_peak_bytes(step, fused_attention=False)
    memory_tricks.set_attention_slicing(model, 256)
    act["step_math_attention_sliced_256"] = memory.activation_peak_bytes(step, fused_attention=False)
    memory_tricks.set_attention_slicing(model, None)
    act["vae_decode_8_frames"] = memory.activation_peak_bytes(lambda: model.vae.decode(z8))
    act["apm"] = memory.activation_peak_bytes(lambda: model.resampler(model.image_encoder(img)[:, None]))
    act["text"] = memory.activation_peak_bytes(lambda: model.text_encoder(ids))
    w = {p: weight_bytes(getattr(model, p)) for p in ("base_model", "unet", "image_encoder", "resampler", "text_encoder", "vae")}
    w8 = {p: weight_bytes(getattr(model, p), fp8=True) for p in ("base_model", "unet")}
    for k, v in act.items():
        row(results, "estimate", f"stage 2 activations: {k}", gib=_gib(v))
    for k, v in w.items():
        row(results, "estimate", f"stage 2 weights fp16: {k}", gib=_gib(v), fp8_gib=_gib(w8[k]) if k in w8 else None)
    unets, others = w["base_model"] + w["unet"], sum(w[p] for p in ("image_encoder", "resampler", "text_encoder", "vae"))
    side = max(act["vae_decode_8_frames"] + w["vae"], act["apm"] + w["image_encoder"] + w["resampler"],
               act["text"] + w["text_encoder"])
    plans = {
        "all resident, fp16": unets + others + max(act["step"], act["vae_decode_8_frames"], act["apm"], act["text"]),
        "sequential offload (text, image encoder, resampler, VAE)": unets + max(act["step"], side),
        "offload + fp8 UNets": w8["base_model"] + w8["unet"] + max(act["step"], side),
        "offload + CAM/base swap": max(w["base_model"], w["unet"]) + max(act["step"], side),
    }
    for k, v in plans.items():
        row(results, "estimate", f"stage 2 peak 256x256: {k}", gib=_gib(v))
    del model
    return {"activations": act, "weights": w, "weights_fp8": w8, "plans": plans}


REFINER_UNET = dict(in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                    down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
                    up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3, cross_attention_dim=1024,
                    attention_head_dim=64, norm_num_groups=32)  # MS-Vid2Vid-XL, as refiner.infer_unet_config reads it
SD_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
              latent_channels=4, norm_num_groups=32)


def meta_refiner_unet():
    """The real-size refiner UNet (fp16) on the meta device, or None with a printed reason."""
    try:
        from streamingt2v_core.enhancers.ms_vid2vid.unet import build_unet
    except ImportError as e:
        print(f"  refiner part skipped: {e}")
        return None
    import logging

    logging.getLogger("diffusers").setLevel(logging.ERROR)
    with torch.device("meta"):
        return build_unet(REFINER_UNET).to(torch.float16)


def refiner_chunk_call(unet, rows: int, h: int = 90, w: int = 160, clen: int = 24):
    """One refiner UNet call on a 24-frame chunk at 1280x720 (latent 90x160), `rows` CFG rows, meta tensors."""
    with torch.device("meta"):
        x = torch.empty(rows, 4, clen, h, w, dtype=torch.float16)
        ctx = torch.empty(rows, 77, 1024, dtype=torch.float16)
        tt = torch.full((rows,), 599)
    return lambda: unet(x, tt, encoder_hidden_states=ctx, return_dict=False)[0]


def refiner_estimate(results, latent_copies: float) -> dict | None:
    unet = meta_refiner_unet()
    if unet is None:
        return None
    from diffusers import AutoencoderKL

    from streamingt2v_core.enhancers.ms_vid2vid.text import OpenCLIPTextEncoder

    with torch.device("meta"):
        text = OpenCLIPTextEncoder(layers=24)
        vae = AutoencoderKL(**SD_VAE)
    h, w = 90, 160
    act = {}
    call = functools.partial(refiner_chunk_call, unet)

    act["unet_chunk_cfg_batched"] = memory.activation_peak_bytes(call(2))
    act["unet_chunk_one_row"] = memory.activation_peak_bytes(call(1))
    memory.set_feed_forward_chunking(unet, memory.FEED_FORWARD_CHUNK)
    act["unet_chunk_cfg_batched_ff_chunks"] = memory.activation_peak_bytes(call(2))
    act["unet_chunk_one_row_ff_chunks"] = memory.activation_peak_bytes(call(1))
    memory.set_feed_forward_chunking(unet, None)
    for dt, name in ((torch.float32, "fp32"), (torch.float16, "fp16")):
        vae.to(dt)
        for n in (1, 4):  # refine_video's slice_size: 1 by default, as officially
            with torch.device("meta"):
                z = torch.empty(n, 4, h, w, dtype=dt)
                px = torch.empty(n, 3, 720, 1280, dtype=dt)
            act[f"vae_decode_{n}_frames_{name}"] = memory.activation_peak_bytes(lambda: vae.decode(z).sample)
            act[f"vae_encode_{n}_frames_{name}"] = memory.activation_peak_bytes(lambda: vae.encode(px).latent_dist.mean)
    with torch.device("meta"):
        ids = torch.zeros(2, 77, dtype=torch.long)
    act["text"] = memory.activation_peak_bytes(lambda: text(ids))
    wts = {"unet_fp16": weight_bytes(unet), "unet_fp8": weight_bytes(unet, fp8=True),
           "text_fp32": weight_bytes(text, 4), "text_fp16": weight_bytes(text), "vae_fp32": weight_bytes(vae, 4),
           "vae_fp16": weight_bytes(vae)}
    n = {"unet": sum(p.numel() for p in unet.parameters()), "text": sum(p.numel() for p in text.parameters()),
         "vae": sum(p.numel() for p in vae.parameters())}
    row(results, "estimate", "refiner parameters (B)", **{k: round(v / 1e9, 3) for k, v in n.items()})
    for k, v in act.items():
        row(results, "estimate", f"refiner 1280x720 activations: {k}", gib=_gib(v))
    for k, v in wts.items():
        row(results, "estimate", f"refiner weights: {k}", gib=_gib(v))
    latent_frame = 4 * h * w * 4 * latent_copies
    for frames in (240, 1200):
        chunks = -(-(frames - 8) // 16)
        lat = latent_frame * frames
        side = max(act["vae_decode_1_frames_fp32"] + wts["vae_fp32"], act["vae_encode_1_frames_fp32"] + wts["vae_fp32"],
                   act["text"] + wts["text_fp32"])  # offloaded parts in their official fp32, one frame per VAE call
        plans = {
            "refine_latents default (chunk_batch=None: all chunks in one call), fp32 text+VAE resident":
                wts["unet_fp16"] + wts["text_fp32"] + wts["vae_fp32"] + chunks * act["unet_chunk_cfg_batched"] + lat,
            "chunk_batch=1, CFG batched, text+VAE resident fp16":
                wts["unet_fp16"] + wts["text_fp16"] + wts["vae_fp16"] + act["unet_chunk_cfg_batched"] + lat,
            "chunk_batch=1 + feed-forward chunks + offload text/VAE":
                wts["unet_fp16"] + lat + max(act["unet_chunk_cfg_batched_ff_chunks"], side),
            "node memory 'low vram': chunk_batch=1, one CFG row per call, feed-forward chunks, text offloaded, "
            "VAE resident fp32":
                wts["unet_fp16"] + wts["vae_fp32"] + lat
                + max(act["unet_chunk_one_row_ff_chunks"], act["vae_decode_1_frames_fp32"],
                      act["vae_encode_1_frames_fp32"], act["text"] + wts["text_fp32"]),
            "same + one CFG row per call":
                wts["unet_fp16"] + lat + max(act["unet_chunk_one_row_ff_chunks"], side),
            "same + fp8 UNet":
                wts["unet_fp8"] + lat + max(act["unet_chunk_one_row_ff_chunks"], side),
        }
        for k, v in plans.items():
            row(results, "estimate", f"refiner peak {frames} frames: {k}", gib=_gib(v))
    return {"activations": act, "weights": wts, "params": n, "latent_bytes_per_frame": latent_frame}


def bench_estimate(results) -> None:
    s2 = stage2_estimate(results)
    copies = results.get("refiner_live_bytes_per_frame", None)
    copies = copies / (4 * 10 * 16 * 4) if copies else 8.0
    print(f"  refiner whole-video state taken as {copies:.1f} fp32 latents per frame "
          f"({'measured above with the tiny refiner' if 'refiner_live_bytes_per_frame' in results else 'assumed'})")
    rf = refiner_estimate(results, copies)
    results["estimate_detail"] = {"stage2": s2, "refiner": rf, "latent_copies": copies}


# -- main -------------------------------------------------------------------------------------------

def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="tiny model dtype (real: bf16 default)")
    ap.add_argument("--real", action="store_true", help="also the real-size architecture (GPU; on CPU one call)")
    ap.add_argument("--real-dtype", default=None, choices=sorted(DTYPES))
    ap.add_argument("--real-growth", action="store_true", help="with --real on a GPU: the growth series too")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps of the whole-chunk timing (default 4, quick 2)")
    ap.add_argument("--growth-guidance", type=float, default=1.0, help="CFG of the CPU growth series (CUDA: 7.5)")
    ap.add_argument("--repeat", type=int, default=None, help="timed repeats per measurement (default 3, quick 1)")
    ap.add_argument("--frames", type=int, nargs="+", default=None,
                    help="growth milestones (default 16 64 256; --full adds 1024; --quick 16 64)")
    ap.add_argument("--refiner-frames", type=int, nargs="+", default=None,
                    help="refiner lengths (default 16 64 128; --full 16 64 256; --quick 16 40)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak, TFLOP/s (H100/H200 bf16 dense: 989)")
    ap.add_argument("--quick", action="store_true",
                    help="smaller series, one repeat, no options/estimate sections (about a minute on 1 CPU thread)")
    ap.add_argument("--full", action="store_true", help="growth to 1024 frames, refiner to 256 (CPU: ~7 minutes)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["step", "split", "options", "growth", "refiner", "flops", "estimate"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    q = args.quick
    args.steps = args.steps or (2 if q else 4)
    args.repeat = args.repeat or (1 if q else 3)
    args.frames = args.frames or ([16, 64] if q else [16, 64, 256, 1024] if args.full else [16, 64, 256])
    if q:
        args.skip = list(args.skip) + ["estimate", "options"]
    args.refiner_frames = args.refiner_frames or ([16, 40] if q else [16, 64, 256] if args.full else [16, 64, 128])
    device = args.device
    if is_cuda(device) and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device here; use --device cpu")
    name = torch.cuda.get_device_name() if is_cuda(device) else platform.processor() or platform.machine()
    if args.peak_tflops is None:
        args.peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in name.lower()), 989.0)
    torch.manual_seed(0)
    results = {"env": {"torch": torch.__version__, "device": device, "device_name": name,
                       "threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                       "load_before": load(), "quick": q, "steps": args.steps, "repeat": args.repeat}}
    print(f"torch {torch.__version__}, {device} ({name}), {torch.get_num_threads()} thread(s), "
          f"load average {results['env']['load_before']}", flush=True)
    t_all = time.perf_counter()
    dtype = DTYPES[args.dtype]
    model = tiny_model(device, dtype)
    for section, fn in (("step", bench_step), ("split", bench_split), ("options", bench_options),
                        ("growth", bench_growth)):
        if section not in args.skip:
            print(f"[{section}]", flush=True)
            fn(model, device, args, results)
    del model
    if "refiner" not in args.skip:
        print("[refiner]", flush=True)
        bench_refiner(device, dtype, args, results)
    flops = None
    if "flops" not in args.skip or args.real:
        print("[flops] real-size architecture on the meta device", flush=True)
        flops = real_flops(results)
    if "estimate" not in args.skip:
        print("[estimate] real-size memory from meta-device runs (fp16 unless said; no CUDA context included)", flush=True)
        bench_estimate(results)
    if args.real:
        print("[real]", flush=True)
        bench_real(device, args, results, flops)
    results["env"]["load_after"] = load()
    results["env"]["seconds"] = round(time.perf_counter() - t_all, 1)
    print(f"done in {results['env']['seconds']} s; load average {results['env']['load_after']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
