"""Stage-2 core benchmark: one denoiser call (CAM + base UNet, both CFG rows batched) and one whole
chunk, for the tiny oracle model and for the real-size architecture with random weights.

    python bench/core_bench.py [--device cpu|cuda] [--dtype fp32|bf16|fp16] [--real] [--steps N] [--json OUT]

Prints one line per measurement; peak memory is host RSS on CPU and allocated accelerator memory on CUDA.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import streamingt2v_core as st  # noqa: E402
from streamingt2v_core.common.dtypes import DTYPES  # noqa: E402
from streamingt2v_core.t2v.extend import StreamConditioning, generate_chunk  # noqa: E402
from streamingt2v_core.t2v.model import _restore_non_persistent, build_on_meta  # noqa: E402
from tests.support import tiny  # noqa: E402

ORACLE = os.path.join(REPO, "tests", "data", "oracle")


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def tiny_model(device, dtype):
    state = tiny.regenerate(tiny.read_manifest(os.path.join(ORACLE, "tiny_manifest.tsv")))
    return st.load_streamingt2v(state, config=os.path.join(ORACLE, "tiny_config.json"), device=device, dtype=dtype)


def real_size_model(device, dtype):
    """The official architecture with random weights (std 0.02), allocated straight in `dtype`."""
    model = build_on_meta(st.load_config(None)).to(dtype)  # dtype first: never holds an fp32 copy
    model.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02, generator=g)
    _restore_non_persistent(model, torch.device(device))
    return model.eval().requires_grad_(False)


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def denoiser_inputs(model, device):
    cfg = model.config
    sf = cfg.vae_scale_factor
    h, w = cfg.height, cfg.width
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, cfg.latent_channels, cfg.chunk_frames, h // sf, w // sf, generator=g)
    ehs = torch.randn(2, cfg.text_tokens + cfg.apm_tokens, cfg.context_dim, generator=g)
    cond = torch.rand(1, cfg.cond_frames, 3, h, w, generator=g).expand(2, -1, -1, -1, -1) * 2 - 1
    return [t.to(device) for t in (sample, ehs, cond)]


def measure(label, fn, device, repeat=1):
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    fn()  # warm-up (allocator, kernels)
    sync(device)
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    sec = (time.perf_counter() - t) / repeat
    peak = (torch.cuda.max_memory_allocated() / 1024 ** 3) if str(device).startswith("cuda") else rss_gb()
    where = "accelerator" if str(device).startswith("cuda") else "host RSS"
    print(f"{label:<48} {sec * 1000:10.1f} ms   peak {where} {peak:6.2f} GB", flush=True)
    return {"label": label, "seconds": sec, "peak_gb": peak, "peak_kind": where}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--real", action="store_true", help="also the real-size architecture (CPU: minutes, ~7 GB bf16)")
    ap.add_argument("--real-dtype", default=None, choices=sorted(DTYPES), help="dtype of the real-size run")
    ap.add_argument("--steps", type=int, default=4, help="DDIM steps of the whole-chunk measurement (tiny)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device, dtype = args.device, DTYPES[args.dtype]
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}", flush=True)
    results = []

    model = tiny_model(device, dtype)
    model.config.height = model.config.width = 64
    sample, ehs, cond = denoiser_inputs(model, device)
    t = torch.tensor(501)
    results.append(measure(f"tiny denoiser call (2x16 frames, {args.dtype})",
                           lambda: model.predict_noise(sample, t, ehs, cond), device, repeat=3))
    frames = torch.rand(16, 3, 64, 64)
    sc = StreamConditioning.build(model, "a benchmark", "", anchor=frames[0])
    results.append(measure(f"tiny whole chunk ({args.steps} DDIM steps + decode)",
                           lambda: generate_chunk(model, frames, sc, steps=args.steps,
                                                  generator=torch.Generator().manual_seed(0)), device))
    del model

    if args.real:
        rdt = DTYPES[args.real_dtype or ("bf16" if device == "cpu" else args.dtype)]
        t0 = time.perf_counter()
        model = real_size_model(device, rdt)
        n = sum(p.numel() for p in model.parameters())
        print(f"real-size model built: {n / 1e9:.3f} B params in {time.perf_counter() - t0:.1f} s", flush=True)
        sample, ehs, cond = denoiser_inputs(model, device)
        results.append(measure(f"real-size denoiser call (2x16x256^2, {rdt})",
                               lambda: model.predict_noise(sample, t, ehs, cond), device))
        results.append(measure(f"real-size CAM alone (2x8 frames, {rdt})",
                               lambda: model.cam(sample.to(rdt), t, ehs[:, :77].to(rdt), cond.to(rdt)), device))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
