"""The init and streaming nodes in a real headless ComfyUI (fixtures: tests/support/server_fixtures.py):
the node definitions, every API workflow in workflows/, frame counts, seeds, interrupt, caching, progress.

The tiny models run at 64x64; steps are cut to 2 in every prompt so the suite stays fast on 2 cores."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from tests.support.comfy_client import ComfyClient, describe_failure, messages, output_files, read_video_info, status_str
from tests.support.graphs import (CONTINUE_INPUT_FRAMES, TINY_SIZE, WORKFLOWS, continue_input,  # noqa: F401 (fixture)
                                  fast, run_ok, run_watched, saved_frames, stream_graph, the_mp4)

# Node ids and input order are a contract with saved workflows: add inputs at the end only.
EXPECTED_INPUTS = {
    "LoadStreamingT2V": (["ckpt_name", "dtype"], []),
    "LoadModelScopeT2V": (["unet_name", "dtype"], []),
    "StreamingT2VInitFromText": (["model", "t2v_unet", "prompt", "negative_prompt", "steps", "guidance", "seed",
                                  "width", "height"], []),
    "StreamingT2VInitFromFrames": (["model", "frames", "width", "height", "resize"], []),
    "AnchorFrameAPM": (["model", "frames", "index"], []),
    "CAMExtendChunk": (["model", "stream", "prompt", "negative_prompt", "frames_to_add", "steps", "guidance", "eta",
                        "seed", "per_line_prompts"], ["anchor", "memory", "continue_generator"]),
    "ChunkAssembler": (["stream", "fps"], []),
    "VideoQualityMetrics": (["images", "flow", "coeff", "working_size", "window_start", "window_step"],
                            ["prompt", "clip", "clip_vision", "seam_chunk_length", "seam_overlap", "seam_borders",
                             "drift_window", "drift_step"]),
}
EXPECTED_OUTPUTS = {
    "LoadStreamingT2V": ["STREAMINGT2V_MODEL"],
    "LoadModelScopeT2V": ["STREAMINGT2V_T2V_UNET"],
    "StreamingT2VInitFromText": ["STREAMINGT2V_STREAM", "IMAGE"],
    "StreamingT2VInitFromFrames": ["STREAMINGT2V_STREAM", "IMAGE", "STRING"],
    "AnchorFrameAPM": ["STREAMINGT2V_APM", "IMAGE"],
    "CAMExtendChunk": ["STREAMINGT2V_STREAM", "STRING"],
    "ChunkAssembler": ["IMAGE", "FLOAT", "VIDEO"],
    "VideoQualityMetrics": ["STRING", "STRING", "FLOAT", "FLOAT", "FLOAT", "INT", "FLOAT", "FLOAT", "FLOAT"],
}
# Every node the pack registers (nodes/__init__.py); the refiner nodes' inputs: tests/comfy/test_nodes_refiner.py,
# the context-window node's: tests/comfy/test_context_blend.py, StreamingSVD's: tests/unit/nodes/test_svd.py
PACK_NODES = set(EXPECTED_INPUTS) | {"LoadStreamingT2VRefiner", "RandomizedBlendRefiner", "RandomizedBlendContextWindows",
                                     "StreamingSVDSigmas", "LoadStreamingSVDCAM", "StreamingSVDExtend",
                                     "SaveStreamState", "LoadStreamState", "LoadStreamingSVDState", "I2VGenXLEnhancer"}
# frames of the mp4 each shipped workflow writes (chunk 0 whole + 8 per CAM chunk)
EXPECTED_WORKFLOW_FRAMES = {
    "long_video": 16 + 64,
    "continue_video": CONTINUE_INPUT_FRAMES + 32,
    "story_prompts": 16 + 32,
}


@pytest.mark.compat
def test_object_info_lists_every_node_with_inputs_in_order(comfy_server, comfy):
    info = comfy.object_info()
    pack_module = f"custom_nodes.{comfy_server.pack_name}"  # ComfyUI's python_module of a custom node pack
    registered = {node_id for node_id, node in info.items() if node.get("python_module") == pack_module}
    assert registered == PACK_NODES, (f"missing: {sorted(PACK_NODES - registered)}, "
                                      f"unexpected: {sorted(registered - PACK_NODES)}")
    for node_id, (required, optional) in EXPECTED_INPUTS.items():
        assert node_id in info, f"{node_id} missing from /object_info"
        node = info[node_id]
        assert node["input_order"].get("required", []) == required, node_id
        assert node["input_order"].get("optional", []) == optional, node_id
        assert node["output"] == EXPECTED_OUTPUTS[node_id], node_id
        assert node["category"].startswith("StreamingT2V/"), node_id
        assert node["python_module"] == pack_module, node_id
    assert "tiny_streamingt2v.safetensors" in info["LoadStreamingT2V"]["input"]["required"]["ckpt_name"][1]["options"]
    # sidecar configs are not offered as checkpoints
    assert not any(o.endswith(".json") for o in info["LoadStreamingT2V"]["input"]["required"]["ckpt_name"][1]["options"])
    defaults = info["CAMExtendChunk"]["input"]["required"]
    assert (defaults["steps"][1]["default"], defaults["guidance"][1]["default"], defaults["eta"][1]["default"],
            defaults["seed"][1]["default"]) == (50, 7.5, 1.0, 33)
    init = info["StreamingT2VInitFromText"]["input"]["required"]
    assert (init["steps"][1]["default"], init["guidance"][1]["default"], init["negative_prompt"][1]["default"]) == (50, 9.0, "")
    assert info["ChunkAssembler"]["input"]["required"]["fps"][1]["default"] == 8.0


@pytest.mark.compat
@pytest.mark.parametrize("name", sorted(EXPECTED_WORKFLOW_FRAMES))
def test_api_workflow_runs_to_an_mp4(comfy, continue_input, tmp_path, name):
    graph = json.loads((WORKFLOWS / f"{name}_api.json").read_text())
    entry = run_ok(comfy, fast(graph))
    info = read_video_info(the_mp4(comfy, entry, tmp_path))
    assert (info.frames, info.width, info.height) == (EXPECTED_WORKFLOW_FRAMES[name], TINY_SIZE, TINY_SIZE)
    assert abs(info.fps - 8.0) < 1e-6
    if name == "continue_video":  # the init node says in the UI how it resized the 96x80 input
        (init,) = [k for k, v in graph.items() if v["class_type"] == "StreamingT2VInitFromFrames"]
        expected = (f"{CONTINUE_INPUT_FRAMES} frames resized from 96x80 to {TINY_SIZE}x{TINY_SIZE} (center crop) "
                    "to match the model")
        assert entry["outputs"].get(init, {}).get("text") == [expected], entry["outputs"].get(init)


# Workflows whose own test module runs them (other output size, slower stages).
COVERED_ELSEWHERE = {"refine_video": "tests/comfy/test_nodes_refiner.py",
                     "refine_long_video_native": "tests/comfy/test_tiny_wan.py",
                     "long_video_native_context": "tests/comfy/test_tiny_wan.py",
                     "svd_long_video": "tests/comfy/test_svd_workflows.py",
                     "svd_continue_video": "tests/comfy/test_svd_workflows.py",
                     "svd_long_video_full": "tests/comfy/test_svd_workflows.py",
                     "stream_step": "tests/comfy/test_resume.py",
                     "svd_stream_step": "tests/comfy/test_svd_workflows.py"}


@pytest.mark.compat
def test_every_api_workflow_is_covered():
    names = {p.name[: -len("_api.json")] for p in WORKFLOWS.glob("*_api.json")}
    assert names - set(COVERED_ELSEWHERE) == set(EXPECTED_WORKFLOW_FRAMES), \
        "add the new workflow's frame count to EXPECTED_WORKFLOW_FRAMES"


def test_four_chunks_give_16_plus_3x8_frames_and_rounding_is_reported(comfy_server, comfy, tmp_path):
    # 17 frames to add round up to 3 chunks of 8 new frames: with chunk 0, 4 chunks = 16 + 3 * 8 frames
    entry = run_ok(comfy, stream_graph(frames_to_add=17, prefix="video/st2v_four"))
    info = read_video_info(the_mp4(comfy, entry, tmp_path))
    assert (info.frames, info.width, info.height) == (16 + 3 * 8, TINY_SIZE, TINY_SIZE)
    assert "frames_to_add 17 -> 3 chunk(s) x 8 new frames = 24 frames (rounded up to whole chunks)" in comfy_server.log_text()


def test_chained_extension_continues_the_same_stream(comfy, tmp_path):
    """A second CAMExtendChunk continues the first one's stream; the frames before it are kept as they were."""
    first = stream_graph(frames_to_add=8, prefix="video/st2v_chain_a", pngs=True)
    chained = copy.deepcopy(first)
    chained["7"] = {"class_type": "CAMExtendChunk", "inputs": dict(chained["4"]["inputs"], stream=["4", 0],
                                                                   prompt="another prompt", seed=7)}
    chained["5"]["inputs"]["stream"] = ["7", 0]
    chained["6"]["inputs"]["filename_prefix"] = "video/st2v_chain_b"
    chained["9"]["inputs"]["filename_prefix"] = "frames/st2v_chain_b"
    a = saved_frames(comfy, run_ok(comfy, first), tmp_path / "a")
    b = saved_frames(comfy, run_ok(comfy, chained), tmp_path / "b")
    assert a.shape[0] == 24 and b.shape[0] == 32
    assert np.array_equal(a, b[:24])
    assert np.abs(b[24:].astype(int) - b[16:24].astype(int)).mean() > 1  # new frames, not a copy


def test_same_seed_same_frames_other_seed_other_frames(comfy, tmp_path):
    client = ComfyClient(comfy.url)
    runs = {}
    for tag, seed in (("a", 1033), ("b", 1034), ("c", 1033)):  # c after b: the seed-1033 outputs left the cache
        with client.listen() as ws:
            pid = client.post_prompt(stream_graph(frames_to_add=8, seed=seed, prefix=f"video/st2v_seed_{tag}", pngs=True))
            entry = client.wait(pid, timeout=600)
            assert status_str(entry) == "success", describe_failure(entry)
            cached = ws.wait_for("execution_cached", pid, timeout=30)["nodes"]
        assert "4" not in cached, "CAMExtendChunk was served from cache: the comparison would prove nothing"
        runs[tag] = saved_frames(client, entry, tmp_path / tag)
    assert runs["a"].shape == (24, TINY_SIZE, TINY_SIZE, 3)
    assert np.array_equal(runs["a"], runs["c"])
    assert np.abs(runs["a"][16:].astype(int) - runs["b"][16:].astype(int)).mean() > 2
    assert np.array_equal(runs["a"][:16], runs["b"][:16])  # the given frames are not touched


def test_per_line_prompts_apply_chunk_by_chunk(comfy, tmp_path):
    """Same seed and settings: with one prompt per line, "A\\nB" gives the single prompt "A"'s first chunk
    (its 8 new frames) and other frames in the second chunk; "A\\nA" is "A" exactly."""
    a, b = "a red fox running through deep snow", "a blue whale singing under the sea at night"

    def frames(tag: str, prompt: str, per_line: bool) -> np.ndarray:
        g = stream_graph(frames_to_add=16, seed=505, prefix=f"video/st2v_lines_{tag}", pngs=True, prompt=prompt,
                         per_line_prompts=per_line)
        return saved_frames(comfy, run_ok(comfy, g), tmp_path / tag)

    single = frames("a", a, False)
    story = frames("ab", f"{a}\n{b}", True)
    repeated = frames("aa", f"{a}\n{a}", True)
    assert single.shape == story.shape == repeated.shape == (16 + 2 * 8, TINY_SIZE, TINY_SIZE, 3)
    assert np.array_equal(story[:24], single[:24])  # chunk 1 (frames 16..23) takes line 1
    assert np.abs(story[24:].astype(int) - single[24:].astype(int)).mean() > 1  # chunk 2 takes line 2
    assert np.array_equal(repeated, single)


def test_anchor_from_any_image_of_another_size(comfy, tmp_path):
    """AnchorFrameAPM on an image that is not a frame of the stream (another size and colour, e.g. a
    character reference) runs, and the new frames differ from those with the default anchor (frame 0 of
    the stream), while the node on frame 0 itself gives the default's frames exactly."""
    def anchored(tag: str, image: dict | None) -> np.ndarray:
        g = stream_graph(frames_to_add=8, seed=606, prefix=f"video/st2v_anchor_{tag}", pngs=True)
        if image is not None:
            g["7"] = image
            g["8"] = {"class_type": "AnchorFrameAPM", "inputs": {"model": ["1", 0], "frames": ["7", 0], "index": 0}}
            g["4"]["inputs"]["anchor"] = ["8", 0]
        return saved_frames(comfy, run_ok(comfy, g), tmp_path / tag)

    base = anchored("default", None)
    frame0 = anchored("frame0", {"class_type": "EmptyImage", "inputs": {"width": TINY_SIZE, "height": TINY_SIZE,
                                                                        "batch_size": 1, "color": 0x3366CC}})
    other = anchored("image", {"class_type": "EmptyImage", "inputs": {"width": 96, "height": 48, "batch_size": 1,
                                                                      "color": 0xE0A020}})
    assert base.shape == frame0.shape == other.shape == (24, TINY_SIZE, TINY_SIZE, 3)
    assert np.array_equal(frame0, base)  # an explicit anchor is used the way the default one is
    assert np.array_equal(base[:16], other[:16])  # the given frames are not touched
    # the tiny model's APM is weak: about 1 grey level on average (measured 1.19); 0 if the anchor were ignored
    assert np.abs(other[16:].astype(int) - base[16:].astype(int)).mean() > 0.25


@pytest.mark.compat
def test_second_identical_prompt_is_served_from_cache(comfy):
    client = ComfyClient(comfy.url)
    graph = stream_graph(frames_to_add=8, prefix="video/st2v_cache")
    run_ok(client, graph)
    with client.listen() as ws:
        pid = client.post_prompt(graph)
        entry = client.wait(pid, timeout=120)
        assert status_str(entry) == "success", describe_failure(entry)
        cached = ws.wait_for("execution_cached", pid, timeout=30)["nodes"]
        assert set(cached) >= {"1", "3", "4", "5"}
        ran = {d.get("node") for d in ws.of_type("executing", pid)} - {None}
        assert not ran & {"1", "3", "4", "5"}, f"nodes ran again: {ran}"
        assert not ws.of_type("progress", pid)


@pytest.mark.compat
def test_progress_messages_cover_every_step_of_every_chunk(comfy):
    progress, _ = run_watched(comfy, stream_graph(frames_to_add=16, steps=3, seed=101, prefix="video/st2v_progress"), "4")
    assert progress, "no websocket progress messages from CAMExtendChunk"
    assert {d["max"] for d in progress} == {2 * 3}  # one bar over all steps of all chunks
    values = [d["value"] for d in progress]
    assert values == sorted(values) and values[-1] == 6 and set(range(1, 7)) <= set(values)


@pytest.mark.compat
def test_interrupt_during_a_chunk_then_the_next_prompt_runs(server_alive, comfy, tmp_path):
    client = ComfyClient(comfy.url)
    with client.listen() as ws:
        pid = client.post_prompt(stream_graph(frames_to_add=80, steps=500, seed=202, prefix="video/st2v_interrupted"))
        ws.wait_for("progress", pid, timeout=300, predicate=lambda d: d.get("node") == "4")
        client.interrupt()
        ws.wait_for("execution_interrupted", pid, timeout=120)
        entry = client.wait(pid, timeout=120)
    assert status_str(entry) == "error"
    assert messages(entry, "execution_interrupted")
    assert not output_files(entry)
    assert not list((server_alive.output_dir / "video").glob("st2v_interrupted*"))
    entry = run_ok(client, stream_graph(frames_to_add=8, seed=203, prefix="video/st2v_after_interrupt"))
    assert read_video_info(the_mp4(client, entry, tmp_path)).frames == 24


@pytest.mark.compat
def test_a_preview_image_of_each_finished_chunk(comfy):
    """Binary websocket frames: PREVIEW_IMAGE (type 1) = 4-byte event, 4-byte format (1 = JPEG), image."""
    _, previews = run_watched(comfy, stream_graph(frames_to_add=24, seed=404, prefix="video/st2v_preview"), "4")
    assert len(previews) == 3, "one preview per finished chunk"
    # ComfyUI scales previews to its --preview-size; the frame is square, so is the preview
    assert [(fmt, img.format, img.size[0] == img.size[1]) for fmt, img in previews] == [(1, "JPEG", True)] * 3
