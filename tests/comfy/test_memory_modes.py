"""The nodes' `memory` input in a real headless ComfyUI: "low vram" (parts offloaded between uses, feed-forwards
in token chunks, one refiner chunk and guidance row per UNet call) gives the same frames as "max speed" (stage
2 bit for bit, the refiner to float rounding), the node says which plan ran, and a bad mode is refused at validation. Which plan "auto" picks is decided by
streamingt2v_core.common.memory.plan (tests/unit/streamingt2v_core/common/memory/test_plan.py); on this CPU "auto" keeps everything."""
from __future__ import annotations

import numpy as np
import pytest

from tests.support.comfy_client import ComfyClient
from tests.support.graphs import TINY_SIZE, images_graph, rejected, run_ok, saved_frames, stream_graph


def node_text(entry: dict, node: str) -> str:
    return "\n".join(entry["outputs"][node]["text"])


@pytest.mark.compat
def test_object_info_offers_the_memory_modes(comfy):
    info = comfy.object_info()
    # memory was added at the end; CAMExtendChunk has gained continue_generator after it since
    assert info["CAMExtendChunk"]["input_order"]["optional"] == ["anchor", "memory", "continue_generator"]
    assert info["RandomizedBlendRefiner"]["input_order"]["optional"][-1] == "memory"
    for node in ("CAMExtendChunk", "RandomizedBlendRefiner"):
        kind, spec = info[node]["input"]["optional"]["memory"]
        assert (kind, spec["options"], spec["default"]) == ("COMBO", ["auto", "max speed", "low vram"], "auto"), node


def test_stream_low_vram_gives_the_same_frames_and_says_so(comfy, tmp_path):
    runs, texts = {}, {}
    for mode in ("max speed", "low vram", "auto"):
        g = stream_graph(frames_to_add=8, seed=707, prefix=f"video/st2v_mem_{mode[:3]}", pngs=True, memory=mode)
        entry = run_ok(comfy, g)
        runs[mode], texts[mode] = saved_frames(comfy, entry, tmp_path / mode[:3]), node_text(entry, "4")
    assert runs["max speed"].shape == (24, TINY_SIZE, TINY_SIZE, 3)
    assert np.array_equal(runs["max speed"], runs["low vram"])
    assert np.array_equal(runs["max speed"], runs["auto"])
    assert "memory: low vram (text/image encoders, resampler and VAE offloaded" in texts["low vram"]
    assert "memory: all parts on the device" in texts["auto"]  # the CPU: nowhere to offload to
    assert "frames_to_add 8 -> 1 chunk(s)" in texts["auto"]


def test_refiner_low_vram_gives_the_same_frames(comfy, tmp_path):
    runs = {}
    for mode in ("max speed", "low vram"):
        entry = run_ok(comfy, images_graph(16, prefix=f"video/st2v_rmem_{mode[:3]}", pngs=True, memory=mode))
        runs[mode] = saved_frames(comfy, entry, tmp_path / mode[:3])
    assert runs["max speed"].shape[0] == 16
    # low vram runs the two guidance rows as two UNet calls: the same numbers up to float rounding, which
    # may move a pixel across an 8-bit level
    d = np.abs(runs["max speed"].astype(int) - runs["low vram"].astype(int))
    assert d.max() <= 1 and d.mean() < 0.01, (d.max(), d.mean())


@pytest.mark.compat
def test_unknown_memory_mode_is_refused_at_validation(comfy):
    client = ComfyClient(comfy.url)
    rejected(client, stream_graph(frames_to_add=8, memory="tiny"), "4", "memory", "low vram")  # CAMExtendChunk
    rejected(client, images_graph(16, memory="tiny"), "3", "memory", "low vram")  # RandomizedBlendRefiner
