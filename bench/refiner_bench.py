"""Time and memory per solver step of the refiner, and the speed-up of batching all chunks of a step.

Three call patterns over the same whole-video latent (tiny MS-Vid2Vid refiner, random weights):
  official : one chunk at a time, positive and negative passes separately (2 x chunks UNet calls per step)
  chunkwise: one chunk at a time, guidance rows batched (chunks calls per step)
  batched  : all chunks and both guidance rows in one UNet call (our default)
Peak memory: CUDA max_memory_allocated on a GPU; on the CPU the growth of peak RSS over the loaded model,
each pattern in its own process so the peaks do not mask each other.

usage: python bench/refiner_bench.py [--frames 40 88] [--steps 3] [--device cpu] [--threads 1]
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streamingt2v_core.blending.cuts import chunk_starts  # noqa: E402
from streamingt2v_core.blending.sdedit import refine_latents  # noqa: E402


class RowByRow(nn.Module):
    """Runs a UNet one batch row at a time: the official two separate guidance passes."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    @property
    def config(self):
        return self.unet.config

    def forward(self, x, t, encoder_hidden_states, return_dict=False):
        rows = [self.unet(x[i:i + 1], t[i:i + 1], encoder_hidden_states=encoder_hidden_states[i:i + 1],
                          return_dict=False)[0] for i in range(x.shape[0])]
        return (torch.cat(rows),)


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(refiner, noised, ctx, neg, steps, chunk_batch):
    device = noised.device
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    before = peak_bytes(device)
    times = []
    # wall time on a GPU; process CPU time on the CPU, which a shared, loaded machine does not inflate
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    last = [clock()]

    def tick(i, n, x0):
        if device.type == "cuda":
            torch.cuda.synchronize()
        now = clock()
        times.append(now - last[0])
        last[0] = now

    refine_latents(refiner, noised, ctx, neg, steps=steps, chunk_batch=chunk_batch, callback=tick, seed=0)
    peak = peak_bytes(device) - (0 if device.type == "cuda" else before)
    # the first step includes warm-up; the CPU is shared, so the fastest later step is the cleanest number
    return min(times[1:] or times), peak


def measure(frames: int, pattern: str, steps: int, device: torch.device) -> tuple[float, int]:
    from tools import make_tiny_refiner
    from streamingt2v_core.enhancers.load import load_refiner

    with tempfile.TemporaryDirectory() as tmp:  # the UNet alone: text encoder and VAE would set the RSS peak
        folder = make_tiny_refiner.write(Path(tmp), "converted", components=("unet",))
        refiner = load_refiner(folder / "unet.safetensors", config=folder / "tiny_v2v_config.json", device=device)
    g = torch.Generator().manual_seed(0)
    ctx, neg = torch.randn(1, 77, 1024, generator=g).to(device), torch.zeros(1, 77, 1024, device=device)
    noised = torch.randn(1, 4, frames, 10, 16, generator=g).to(device)
    if pattern == "official":
        refiner.unet = RowByRow(refiner.unet)
    return run(refiner, noised, ctx, neg, steps, None if pattern == "batched" else 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[40, 88])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--single", default=None, help=argparse.SUPPRESS)  # child process: one pattern
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.single:
        sec, peak = measure(args.frames[0], args.single, args.steps, device)
        print(f"RESULT {sec} {peak}")
        return 0

    import subprocess

    print(f"refiner bench: tiny MS-Vid2Vid (16.8 M params), latent 10x16, device {device}, "
          f"{args.threads} thread(s), fastest of steps 2..{args.steps}")
    print(f"{'frames':>6s} {'chunks':>6s} {'pattern':>10s} {'s/step':>8s} {'peak MiB':>9s} {'speed-up':>9s}"
          f"   (s/step: {'GPU wall' if device.type == 'cuda' else 'process CPU'} time)")
    for frames in args.frames:
        rows = {}
        for pattern in ("official", "chunkwise", "batched"):
            cmd = [sys.executable, __file__, "--frames", str(frames), "--steps", str(args.steps), "--device",
                   args.device, "--threads", str(args.threads), "--single", pattern]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
            rows[pattern] = (float(line.split()[1]), int(line.split()[2]))
        for name, (sec, peak) in rows.items():
            print(f"{frames:6d} {len(chunk_starts(frames)):6d} {name:>10s} {sec:8.2f} {peak / 2 ** 20:9.0f} "
                  f"{rows['official'][0] / sec:8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
