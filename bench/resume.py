"""What resumable streams cost: the state's size, the time to save and load it per step, and the host memory
of the client and the server when a video runs one chunk per prompt (tools/stream_client.py).

    python bench/resume.py [--frames 64 512] [--steps 1] [--repeat 20]

1. State files written and read by the core (streamingt2v_core.stream_state), median of --repeat runs: at the
   tiny model's size and at the official one (256x256, 1024-wide APM tokens, the prompts of a 1,200-frame
   stream: 150 chunks), plus the model identity check (sampled hash) on a 6.5 GB sparse file (the fp16
   converted weights' size).
2. A real ComfyUI server (CPU) with the tiny models; for each length the client runs the whole video in a
   process of its own, one chunk per prompt. Peak RSS: the server sampled every 50 ms (bench/stream_memory.py's
   sampler), the client from the kernel's accounting of that child (ru_maxrss). Then the same lengths as one
   in-graph prompt on the same server, for the time per chunk and the memory growth it is compared with.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a script: the repository root makes `tests.support` and the core importable
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402
from stream_memory import MiB, RssSampler  # noqa: E402
from stream_memory import graph as in_graph_prompt  # noqa: E402

from streamingt2v_core.stream_state import (ModelIdentity, SavedStream, model_identity, read_state,  # noqa: E402
                                            write_state)
from tests.support.comfy_client import (ComfyClient, ComfyServer, describe_failure, status_str,  # noqa: E402
                                       write_extra_model_paths)

REAL_CHUNK_SECONDS = 30 * 60 / 149  # official A100 figure: about half an hour for the 149 CAM chunks of 1,200 frames


def synthetic_state(size: int, width: int, chunks: int) -> SavedStream:
    g = torch.Generator().manual_seed(0)
    return SavedStream(
        family="streamingt2v", model=ModelIdentity("streaming_t2v.safetensors", 6_500_000_000, "0" * 64, "fp16"),
        seed=33, generator_state=g.get_state(), num_chunks=chunks, num_frames=16 + 8 * (chunks - 1),
        tensors={"cond_frames": torch.rand(8, 3, size, size, generator=g),
                 "anchor_tokens": torch.randn(1, 16, width, generator=g),
                 "anchor_image": torch.rand(1, 3, size, size, generator=g)},
        settings={"prompts": [f"chunk {i}: a cat running on the street, cinematic" for i in range(chunks)],
                  "negative_prompt": "", "steps": 50, "guidance": 7.5, "eta": 1.0, "anchor_source": "frame 0"})


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def state_costs(tmp: Path, repeat: int) -> None:
    print("state files (core write_state / read_state, median of", repeat, "runs)")
    sparse = tmp / "weights.safetensors"
    with open(sparse, "wb") as f:
        f.truncate(6_500_000_000)
    ident_ms = median_ms(lambda: model_identity(sparse, "streaming_t2v.safetensors", torch.float16), repeat)
    for label, size, width, chunks in (("tiny 64x64, 8 chunks", 64, 1024, 8), ("tiny 64x64, 64 chunks", 64, 1024, 64),
                                       ("official 256x256, 1,200 frames", 256, 1024, 150)):
        state = synthetic_state(size, width, chunks)
        path = tmp / "s.safetensors"
        save_ms = median_ms(lambda: write_state(path, state), repeat)
        load_ms = median_ms(lambda: read_state(path), repeat)
        print(f"  {label:32s}: {path.stat().st_size / 1e6:6.2f} MB, save {save_ms:6.1f} ms, load {load_ms:6.1f} ms")
    share = (save_ms + load_ms + 2 * ident_ms) / 1000 / REAL_CHUNK_SECONDS
    print(f"  model identity (sampled hash of a 6.5 GB file): {ident_ms:.1f} ms (checked at CAM and at load)")
    print(f"  official size: save + load + 2 identity checks = {share * 100:.3f} % of a {REAL_CHUNK_SECONDS:.1f} s "
          "chunk (A100)")


def client_run(url: str, frames: int, steps: int, out: Path) -> tuple:
    """The client in a process of its own; (seconds, its peak RSS in bytes)."""
    cmd = [sys.executable, str(REPO / "tools" / "stream_client.py"), "--server", url, "--prompt", "memory test",
           "--chunks", str((frames - 16) // 8), "--steps", str(steps), "--init-steps", str(steps),
           "--model", "tiny_streamingt2v.safetensors", "--dtype", "fp32",
           "--t2v-unet", "tiny_modelscope_t2v.safetensors", "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    _, status, usage = os.wait4(proc.pid, 0)
    secs = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"the client failed ({proc.returncode}):\n{err[-3000:]}")
    return secs, usage.ru_maxrss * 1024


def memory_runs(tmp: Path, frame_counts: list, steps: int) -> None:
    from tests.support.server_fixtures import make_tiny_models

    make_tiny_models(tmp / "models")
    yaml_path = tmp / "extra_model_paths.yaml"
    write_extra_model_paths(yaml_path, tmp / "models")
    with ComfyServer(tmp / "base", extra_model_paths=yaml_path) as server:
        client_run(server.url, 24, steps, tmp / "warmup.mp4")  # load the models once: measure streaming, not loading
        print(f"client path, tiny model at 64x64, {steps} step(s) per chunk, one chunk per prompt; RSS in MiB")
        prev = None
        for n in frame_counts:
            with RssSampler(server.proc.pid) as s:
                before = s.rss()
                secs, client_peak = client_run(server.url, n, steps, tmp / f"v{n}.mp4")
            chunks = (n - 16) // 8
            line = (f"  {n:4d} frames ({chunks} steps): server before {before / MiB:7.1f} peak {s.peak / MiB:7.1f}; "
                    f"client peak {client_peak / MiB:6.1f}; {secs:.1f} s ({secs / chunks:.2f} s per step)")
            if prev is not None:
                line += (f"; growth per added frame: server {(s.peak - prev[1]) / (n - prev[0]) / 1024:.1f} KiB, "
                         f"client {(client_peak - prev[2]) / (n - prev[0]) / 1024:.1f} KiB")
            print(line, flush=True)
            prev = (n, s.peak, client_peak)
        print("in-graph path (one prompt: init from frames -> CAMExtendChunk -> ChunkAssembler -> SaveVideo), "
              "same server")
        client = ComfyClient(server.url)
        prev = None
        for n in frame_counts:
            with RssSampler(server.proc.pid) as s:
                t0 = time.perf_counter()
                entry = client.run(in_graph_prompt(n, steps, 64, seed=n), timeout=3600)
                secs = time.perf_counter() - t0
            assert status_str(entry) == "success", describe_failure(entry)
            chunks = (n - 16) // 8
            line = (f"  {n:4d} frames ({chunks} chunks): server peak {s.peak / MiB:7.1f}; {secs:.1f} s "
                    f"({secs / chunks:.2f} s per chunk)")
            if prev is not None:
                line += f"; growth per added frame: server {(s.peak - prev[1]) / (n - prev[0]) / 1024:.1f} KiB"
            print(line, flush=True)
            prev = (n, s.peak)
    print(f"  a float32 frame at 64x64 is {64 * 64 * 3 * 4 / 1024:.0f} KiB")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, nargs="+", default=[64, 512])
    p.add_argument("--steps", type=int, default=1, help="denoising steps per chunk")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--no-server", action="store_true", help="only the state file costs")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        state_costs(tmp, args.repeat)
        if not args.no_server:
            memory_runs(tmp, args.frames, args.steps)


if __name__ == "__main__":
    main()
