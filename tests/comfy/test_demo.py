"""The main demo command (tools/run_demo.py, what tools/demo.sh runs) end to end, with its own ComfyUI."""
import os
import re
import subprocess
import sys

import psutil

from tests.support.comfy_client import REPO_ROOT, read_video_info


def run_demo(*args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "run_demo.py"), *map(str, args)],
                          cwd=str(REPO_ROOT), env=env, capture_output=True, text=True, timeout=timeout)


def test_demo_writes_the_mp4_it_prints(tiny_models_dir, tmp_path):
    r = run_demo("--models", tiny_models_dir, "--out", tmp_path / "demo", "--frames", 30, "--steps", 1,
                 "--prompt", "a lighthouse at dusk", "--threads", 1)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m = re.search(r"^video: (.+\.mp4)$", r.stdout, re.M)
    assert m, r.stdout[-2000:]
    path = m.group(1)
    assert path.startswith(str(tmp_path / "demo" / "comfyui" / "output"))
    info = read_video_info(path)
    # 16 frames of the first chunk + 14 asked for, rounded up to 2 chunks of 8 = 32
    assert (info.frames, info.width, info.height) == (32, 64, 64)
    assert f"{info.frames} frames, 64x64" in r.stdout
    # the server it started is stopped
    base = str(tmp_path / "demo" / "comfyui")
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if base in " ".join(p.info["cmdline"] or [])]
    assert not left, f"ComfyUI processes left running: {left}"


def test_demo_refuses_a_models_folder_without_weights(tmp_path):
    (tmp_path / "streamingt2v").mkdir()
    r = run_demo("--models", tmp_path, "--out", tmp_path / "demo", timeout=60)
    assert r.returncode != 0
    assert "no StreamingT2V checkpoint" in (r.stdout + r.stderr)
    assert not (tmp_path / "demo" / "comfyui").exists()  # refused before any server started


def test_demo_refuses_a_video_no_longer_than_the_first_chunk(tmp_path):
    r = run_demo("--frames", 16, "--out", tmp_path / "demo", timeout=60)
    assert r.returncode == 2
    assert "--frames 16" in r.stderr
