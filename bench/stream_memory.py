"""Host memory of a real ComfyUI server while the pack streams long videos with the tiny model.

    python bench/stream_memory.py [--frames 64 512] [--steps 1] [--size 64]

Starts ComfyUI headless (CPU) with the pack and the tiny models, then for each length runs
EmptyImage (16 frames) -> init from frames -> CAMExtendChunk -> ChunkAssembler -> SaveVideo and samples
the server's resident set size (RSS) every 50 ms. Prints, per run: RSS before, peak RSS, RSS after (the
outputs ComfyUI keeps cached), and the growth per added frame against the previous run. The frames a
stream keeps are float32 [N, H, W, 3]; at 256x256 that is 768 KiB per frame, held twice once
ChunkAssembler joined them (the stream's chunks and the assembled IMAGE are both cached).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a script: the repository root makes `tests.support` importable

from tests.support.comfy_client import ComfyClient, ComfyServer, describe_failure, status_str, write_extra_model_paths  # noqa: E402

MiB = 1024 * 1024


class RssSampler:
    """Peak RSS of one process (and its children), sampled on a thread."""

    def __init__(self, pid: int, every: float = 0.05):
        import psutil

        self.proc, self.every, self.peak = psutil.Process(pid), every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        return self.proc.memory_info().rss

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.every)

    def __enter__(self):
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def graph(total_frames: int, steps: int, size: int, seed: int) -> dict:
    return {
        "1": {"class_type": "LoadStreamingT2V", "inputs": {"ckpt_name": "tiny_streamingt2v.safetensors", "dtype": "fp32"}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 16, "color": 0x3366CC}},
        "3": {"class_type": "StreamingT2VInitFromFrames", "inputs": {"model": ["1", 0], "frames": ["2", 0], "width": size,
                                                                     "height": size, "resize": "center crop"}},
        "4": {"class_type": "CAMExtendChunk", "inputs": {"model": ["1", 0], "stream": ["3", 0], "prompt": "memory test",
                                                         "negative_prompt": "", "frames_to_add": total_frames - 16,
                                                         "steps": steps, "guidance": 7.5, "eta": 1.0, "seed": seed,
                                                         "per_line_prompts": False}},
        "5": {"class_type": "ChunkAssembler", "inputs": {"stream": ["4", 0], "fps": 8.0}},
        "6": {"class_type": "SaveVideo", "inputs": {"video": ["5", 2], "filename_prefix": f"video/mem_{total_frames}",
                                                    "format": "mp4", "codec": "h264"}},
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, nargs="+", default=[64, 512])
    p.add_argument("--steps", type=int, default=1, help="denoising steps per chunk")
    p.add_argument("--size", type=int, default=64, help="frame size (the tiny model's own is 64; 256 shows the "
                                                        "per-frame cost at the official resolution)")
    args = p.parse_args()
    size = args.size
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, str(REPO / "tools" / "make_tiny_models.py"), str(tmp / "models")],
                       check=True, capture_output=True)
        yaml_path = tmp / "extra_model_paths.yaml"
        write_extra_model_paths(yaml_path, tmp / "models")
        with ComfyServer(tmp / "base", extra_model_paths=yaml_path) as server:
            client = ComfyClient(server.url)
            sampler_pid = server.proc.pid
            # warm up: load the model once so the runs measure streaming, not loading
            entry = client.run(graph(24, 1, size, seed=1), timeout=1800)
            assert status_str(entry) == "success", describe_failure(entry)
            prev = None
            print(f"tiny model at {size}x{size}, {args.steps} step(s) per chunk; server RSS in MiB")
            for n in args.frames:
                with RssSampler(sampler_pid) as s:
                    before = s.rss()
                    t0 = time.perf_counter()
                    entry = client.run(graph(n, args.steps, size, seed=n), timeout=3600)
                    secs = time.perf_counter() - t0
                assert status_str(entry) == "success", describe_failure(entry)
                after = s.rss()
                line = (f"{n:5d} frames ({(n - 16) // 8} CAM chunks): before {before / MiB:8.1f}  peak {s.peak / MiB:8.1f}  "
                        f"after {after / MiB:8.1f}  ({secs:.1f} s)")
                if prev is not None:
                    per_frame = (s.peak - prev[1]) / max(1, n - prev[0])
                    line += f"  peak growth {per_frame / 1024:.1f} KiB per added frame"
                print(line, flush=True)
                prev = (n, s.peak)
            frame_bytes = size * size * 3 * 4
            print(f"a float32 frame at {size}x{size} is {frame_bytes / 1024:.0f} KiB "
                  f"(at 256x256: {256 * 256 * 3 * 4 / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
