"""LoadStreamingT2V through the real server: an official-style Lightning .ckpt and a converted folder are
offered and load to the same model as the flat safetensors file (the same frames)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.comfy_client import ComfyClient
from tests.support.graphs import run_ok, saved_frames, stream_graph

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def other_layouts(tiny_models_dir) -> dict:
    """The tiny checkpoint again as a Lightning-style .ckpt (with a non-tensor entry beside state_dict)
    and as a folder converted by streamingt2v_core.convert, in the server's models/streamingt2v."""
    from safetensors.torch import load_file

    folder = tiny_models_dir / "streamingt2v"
    flat = folder / "tiny_streamingt2v.safetensors"
    ckpt = folder / "tiny_lightning.ckpt"
    if not ckpt.exists():
        torch.save({"state_dict": load_file(flat), "epoch": 7, "global_step": 1234}, ckpt)
        shutil.copyfile(folder / "tiny_streamingt2v.json", folder / "tiny_lightning.json")
    converted = folder / "tiny_converted"
    if not converted.exists():
        subprocess.run([sys.executable, "-m", "streamingt2v_core.convert", str(flat), str(converted), "--dtype", "fp32"],
                       cwd=str(ROOT), check=True, capture_output=True)
    return {"ckpt": ckpt.name, "folder": converted.name}


@pytest.mark.compat
def test_ckpt_and_converted_folder_are_offered(comfy, other_layouts):
    options = comfy.object_info("LoadStreamingT2V")["input"]["required"]["ckpt_name"][1]["options"]
    assert other_layouts["ckpt"] in options and other_layouts["folder"] in options
    # the files inside a converted folder and the sidecar configs are not offered on their own
    assert not [o for o in options if o.startswith(other_layouts["folder"] + "/") or o.endswith(".json")]


def test_every_layout_gives_the_same_frames(comfy, other_layouts, tmp_path):
    client = ComfyClient(comfy.url)
    frames = {}
    for tag, name in (("flat", "tiny_streamingt2v.safetensors"), ("ckpt", other_layouts["ckpt"]),
                      ("folder", other_layouts["folder"])):
        g = stream_graph(frames_to_add=8, seed=505, prefix=f"video/st2v_layout_{tag}", pngs=True)
        g["1"]["inputs"]["ckpt_name"] = name
        frames[tag] = saved_frames(client, run_ok(client, g), tmp_path / tag)
    assert frames["flat"].shape == (24, 64, 64, 3)
    # equal weights; memory-mapped tensors sit at other alignments, for which CPU kernels may take other
    # vector paths: allow one 8-bit level where a float lands on a rounding edge
    for tag in ("ckpt", "folder"):
        d = np.abs(frames[tag].astype(int) - frames["flat"].astype(int))
        assert d.max() <= 1, (tag, d.max(), d.mean(), (d > 0).mean())


def test_reduced_precision_dtypes_run_and_stay_close(comfy, tmp_path):
    """The loader's dtype choice reaches the model: bf16 and fp16 runs succeed and give frames close to fp32
    but not identical (an ignored choice would give fp32's frames exactly)."""
    client = ComfyClient(comfy.url)
    frames = {}
    for dtype in ("fp32", "bf16", "fp16"):
        g = stream_graph(frames_to_add=8, seed=515, prefix=f"video/st2v_dtype_{dtype}", pngs=True)
        g["1"]["inputs"]["dtype"] = dtype
        frames[dtype] = saved_frames(client, run_ok(client, g), tmp_path / dtype).astype(int)
    for dtype in ("bf16", "fp16"):
        d = np.abs(frames[dtype][16:] - frames["fp32"][16:])
        assert d.max() > 0, dtype  # the weights really are in another dtype
        assert d.mean() < 8, (dtype, d.mean())  # 8-bit levels: the same video up to rounding
