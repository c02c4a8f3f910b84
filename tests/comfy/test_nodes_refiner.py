"""The refiner nodes in a real headless ComfyUI (fixtures: tests/support/server_fixtures.py): the shipped
refine_video workflow (text -> stream -> assemble -> refine -> CreateVideo -> SaveVideo) on tiny models,
frame counts the official chunking would cut short, and bad input.

The tiny refiner (tools/make_tiny_models.py -> models/streamingt2v_refiner/tiny_ms_vid2vid) works on an
80x128 canvas instead of 720x1280, so a 64x64 frame is resized to 80x80 and, cropped back to the content
(the default output), comes out 80x80; the padded canvas comes out 128x80 (W x H)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.support.comfy_client import read_video_info
from tests.support.graphs import (CANVAS_HW, CONTENT, INPUT_COLOR, OFFICIAL, REFINER, REFINE_STEPS,  # noqa: F401 (fixture)
                                  WORKFLOWS, failed_before_work, fast, images_graph, no_new_output, rejected, run_ok,
                                  run_watched, saved_frames, the_mp4)

EXPECTED_INPUTS = {
    "LoadStreamingT2VRefiner": ["refiner_name", "dtype"],
    "RandomizedBlendRefiner": ["refiner", "images", "prompt", "negative_prompt", "strength_step", "steps", "guidance",
                               "rescale", "chunk", "overlap", "seed", "output"],
}
EXPECTED_OUTPUTS = {"LoadStreamingT2VRefiner": ["STREAMINGT2V_REFINER"], "RandomizedBlendRefiner": ["IMAGE"]}


def refine_workflow(frames_to_add: int = 8, refine_steps: int = REFINE_STEPS) -> dict:
    """The shipped API workflow, cut down: 2 steps in stage 2, 16 + frames_to_add frames, few refiner steps."""
    g = fast(json.loads((WORKFLOWS / "refine_video_api.json").read_text()))
    for node in g.values():
        if node["class_type"] == "CAMExtendChunk":
            node["inputs"]["frames_to_add"] = frames_to_add
        if node["class_type"] == "RandomizedBlendRefiner":
            node["inputs"]["steps"] = refine_steps
        if node["class_type"] in ("LoadStreamingT2V", "LoadModelScopeT2V", "LoadStreamingT2VRefiner"):
            node["inputs"]["dtype"] = "fp32"
    return g


@pytest.mark.compat
def test_refiner_nodes_in_object_info(comfy):
    info = comfy.object_info()
    for node_id, required in EXPECTED_INPUTS.items():
        assert node_id in info, f"{node_id} missing from /object_info"
        assert info[node_id]["input_order"]["required"] == required, node_id
        assert info[node_id]["output"] == EXPECTED_OUTPUTS[node_id], node_id
    # the tiny refiner is offered by its folder name; its files are not offered one by one
    assert info["LoadStreamingT2VRefiner"]["input"]["required"]["refiner_name"][1]["options"] == [REFINER]
    spec = info["RandomizedBlendRefiner"]["input"]["required"]
    assert {k: spec[k][1]["default"] for k in OFFICIAL} == OFFICIAL


def test_shipped_workflow_has_the_official_settings():
    g = json.loads((WORKFLOWS / "refine_video_api.json").read_text())
    by_type = {v["class_type"]: v["inputs"] for v in g.values()}
    refine = by_type["RandomizedBlendRefiner"]
    assert {k: refine[k] for k in OFFICIAL} == OFFICIAL
    assert by_type["LoadStreamingT2VRefiner"]["refiner_name"] == REFINER
    assert by_type["LoadStreamingT2V"]["ckpt_name"] == "tiny_streamingt2v.safetensors"
    assert by_type["LoadModelScopeT2V"]["unet_name"] == "tiny_modelscope_t2v.safetensors"
    # the refiner takes the assembled frames and the video keeps the stream's fps
    ids = {v["class_type"]: k for k, v in g.items()}
    assert refine["images"] == [ids["ChunkAssembler"], 0]
    assert by_type["CreateVideo"] == {"images": [ids["RandomizedBlendRefiner"], 0], "fps": [ids["ChunkAssembler"], 1]}
    assert by_type["SaveVideo"]["video"] == [ids["CreateVideo"], 0]


@pytest.mark.compat
def test_refine_workflow_runs_to_an_mp4_with_every_stream_frame(comfy, tmp_path):
    # 16 + 8 = 24 frames: one refiner chunk of 24 at the official settings
    entry = run_ok(comfy, refine_workflow(frames_to_add=8))
    info = read_video_info(the_mp4(comfy, entry, tmp_path))
    assert (info.frames, info.width, info.height) == (24, CONTENT, CONTENT)
    assert abs(info.fps - 8.0) < 1e-6


def test_frame_count_the_official_chunking_would_cut_keeps_every_frame(comfy, tmp_path):
    """41 frames do not fit k*16 + 8 (the official code drops the tail); here the last chunk ends at the last
    frame, and every frame, the tail included, is refined (none passes through as the flat input colour)."""
    entry = run_ok(comfy, images_graph(41, prefix="video/st2v_refine41", pngs=True))
    info = read_video_info(the_mp4(comfy, entry, tmp_path))
    assert (info.frames, info.width, info.height) == (41, CONTENT, CONTENT)
    frames = saved_frames(comfy, entry, tmp_path / "png")
    assert frames.shape == (41, CONTENT, CONTENT, 3)
    flat = np.array([(INPUT_COLOR >> 16) & 255, (INPUT_COLOR >> 8) & 255, INPUT_COLOR & 255])
    change = np.abs(frames.astype(int) - flat).mean(axis=(1, 2, 3))
    assert (change > 5).all(), f"frames left as the input: {np.flatnonzero(change <= 5).tolist()}"
    # the tail frames are distinct refined frames, not copies of one another
    assert np.abs(frames[-1].astype(int) - frames[-9].astype(int)).mean() > 0.5


def test_padded_canvas_output_keeps_the_official_frame(comfy, tmp_path):
    entry = run_ok(comfy, images_graph(16, prefix="video/st2v_refine_padded", output="padded canvas (official 1280x720)"))
    info = read_video_info(the_mp4(comfy, entry, tmp_path))
    assert (info.frames, info.width, info.height) == (16, CANVAS_HW[1], CANVAS_HW[0])


@pytest.mark.compat
def test_progress_over_every_solver_step_and_a_preview(comfy):
    """One websocket progress bar over all solver steps of the refiner (max = steps, every value reached),
    and preview images of the current x0 on the way (JPEG, as ComfyUI sends them)."""
    steps = 3
    progress, previews = run_watched(comfy, images_graph(16, prefix="video/st2v_refine_progress", steps=steps), "3")
    assert progress, "no websocket progress messages from RandomizedBlendRefiner"
    assert {d["max"] for d in progress} == {steps}
    values = [d["value"] for d in progress]
    assert values == sorted(values) and values[-1] == steps and set(range(1, steps + 1)) <= set(values)
    assert 1 <= len(previews) <= steps, f"{len(previews)} previews for {steps} solver steps"
    assert all(fmt == 1 and img.format == "JPEG" and min(img.size) > 0 for fmt, img in previews)


@pytest.mark.compat
@pytest.mark.parametrize("inputs, name, words", [
    ({"chunk": 8, "overlap": 8}, "chunk", ("must be larger than overlap (8)", "overlap+1")),
    ({"chunk": 24, "overlap": 30}, "chunk", ("must be larger than overlap (30)", "overlap+1")),
    ({"overlap": 0}, "overlap", ("0 is too small", "allowed 1..chunk-1")),
    ({"steps": 0}, "steps", ("steps: 0", "allowed 1..1000")),
], ids=["chunk_eq_overlap", "chunk_lt_overlap", "overlap_0", "steps_0"])
def test_bad_settings_rejected_at_validation(comfy, no_new_output, inputs, name, words):
    rejected(comfy, images_graph(24, **inputs), "3", name, *words)
    # the same check guards the shipped workflow
    g = refine_workflow()
    refine_id = next(k for k, v in g.items() if v["class_type"] == "RandomizedBlendRefiner")
    g[refine_id]["inputs"].update(inputs)
    rejected(comfy, g, refine_id, name, *words)


@pytest.mark.compat
def test_frame_size_the_refiner_cannot_take(comfy, no_new_output):
    # 512x8 fitted into 128x80 becomes 128x2: too thin for the autoencoder; raised before any solver step
    msg = failed_before_work(comfy, images_graph(16, width=512, height=8, prefix="video/st2v_refine_thin"),
                             "RandomizedBlendRefiner", "images", "512x8", "128x2", "at least 8")
    assert msg.startswith("images")

