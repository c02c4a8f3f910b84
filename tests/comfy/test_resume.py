"""Streams that survive (issue 15) in real headless ComfyUI servers: Save/Load Stream State, the step
workflow (workflows/stream_step_api.json), and tools/stream_client.py running one video across two servers
while one of them is killed by PID in the middle of a chunk.

The tiny models run at 64x64 with 2 denoising steps per chunk, as in the other real-server tests."""
from __future__ import annotations

import copy
import json
import os
import signal
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.support.comfy_client import REPO_ROOT, ComfyServer, read_video_frames, write_extra_model_paths
from tests.support.graphs import (STEPS, TINY_SIZE, WORKFLOWS, failed_before_work, fast, rejected, run_ok,
                                  saved_frames, segment_frames, stream_graph, text_to_video_graph)

sys.path.insert(0, str(REPO_ROOT / "tools"))
import stream_client  # noqa: E402  (tools/ is not a package)

pytestmark = pytest.mark.resume

PROMPTS = ["a cat on a sofa", "the cat jumps", "a dog arrives"]
CHUNKS = 8


def with_state_save(graph: dict, cam: str, prefix: str, frames_prefix: str) -> dict:
    """graph + SaveStreamState after node `cam` + SaveImage of its new frames."""
    g = copy.deepcopy(graph)
    g["20"] = {"class_type": "SaveStreamState", "inputs": {"stream": [cam, 0], "filename_prefix": prefix,
                                                           "include_frames": False}}
    g["21"] = {"class_type": "SaveImage", "inputs": {"images": ["20", 0], "filename_prefix": frames_prefix}}
    return g


def state_of(entry: dict, node: str = "20") -> dict:
    (f,) = entry["outputs"][node]["stream_states"]
    return f


def test_step_workflow_continues_the_stream_bit_for_bit(comfy, tmp_path):
    """4 chunks in one node == 2 chunks, Save State, then the shipped step workflow (Load State -> CAM ->
    Save State) for 2 more: the same frames, PNG for PNG."""
    whole = saved_frames(comfy, run_ok(comfy, stream_graph(frames_to_add=32, prefix="video/resume_whole", pngs=True)),
                         tmp_path / "whole")
    first = with_state_save(stream_graph(frames_to_add=16, prefix="video/resume_first"), "4", "stream_state/resume_a",
                            "frames/resume_a")
    entry = run_ok(comfy, first)
    a = saved_frames(comfy, entry, tmp_path / "a")
    name = state_of(entry)
    assert entry["outputs"]["20"]["text"][0].startswith(f"saved {name['subfolder']}/{name['filename']} [output]")
    step = fast(json.loads((WORKFLOWS / "stream_step_api.json").read_text()))
    step["1"]["inputs"]["dtype"] = "fp32"
    step["2"]["inputs"]["state"] = f"{name['subfolder']}/{name['filename']} [output]"
    step["3"]["inputs"].update(prompt="a test video", frames_to_add=16, per_line_prompts=False)
    step["5"]["inputs"]["filename_prefix"] = "frames/resume_b"
    b_entry = run_ok(comfy, step)
    b = saved_frames(comfy, b_entry, tmp_path / "b")
    assert (a.shape[0], b.shape[0], whole.shape[0]) == (32, 16, 48)
    assert np.array_equal(np.concatenate([a, b]), whole)
    assert state_of(b_entry, "4")["chunks"] == 1 + 4 and state_of(b_entry, "4")["frames"] == 48
    # without continue_generator the second part re-seeds (today's default): other frames, so the check can fail
    step["3"]["inputs"]["continue_generator"] = False
    step["5"]["inputs"]["filename_prefix"] = "frames/resume_c"
    c = saved_frames(comfy, run_ok(comfy, step), tmp_path / "c")
    assert not np.array_equal(c, b)


def test_bad_states_are_refused_naming_the_input(comfy_server, comfy, tmp_path):
    step = fast(json.loads((WORKFLOWS / "stream_step_api.json").read_text()))
    step["2"]["inputs"]["state"] = "no_such_state.safetensors"
    rejected(comfy, step, "2", "state", "does not exist")
    step["2"]["inputs"]["state"] = "../../outside.safetensors"
    rejected(comfy, step, "2", "state", "leaves its folder")
    # not a state (weights, say): refused in execute before the model is requested
    save_file({"w": torch.zeros(4)}, str(comfy_server.input_dir / "not_a_state.safetensors"))
    step["2"]["inputs"]["state"] = "not_a_state.safetensors"
    failed_before_work(comfy, step, "LoadStreamState", "state:", "not a stream state", "without the",
                       not_run=["1"])
    # a real state, loaded with the model in another dtype
    entry = run_ok(comfy, with_state_save(stream_graph(frames_to_add=8, prefix="video/resume_dtype"), "4",
                                          "stream_state/resume_dtype", "frames/resume_dtype"))
    f = state_of(entry)
    step["2"]["inputs"]["state"] = f"{f['subfolder']}/{f['filename']} [output]"
    step["1"]["inputs"]["dtype"] = "bf16"
    msg = failed_before_work(comfy, step, "LoadStreamState", "model:", "in fp32", "runs in bf16", "dtype fp32")
    assert "tiny_streamingt2v.safetensors" in msg


@pytest.fixture(scope="module")
def second_server(tmp_path_factory, tiny_models_dir):
    base = tmp_path_factory.mktemp("comfy_second")
    yaml_path = base / "extra_model_paths.yaml"
    write_extra_model_paths(yaml_path, tiny_models_dir)
    server = ComfyServer(base, extra_model_paths=yaml_path)
    server.start()
    yield server
    server.stop()


def job() -> stream_client.Job:
    return stream_client.Job(prompts=PROMPTS, chunks=CHUNKS, steps=STEPS, model="tiny_streamingt2v.safetensors",
                             dtype="fp32", t2v_unet="tiny_modelscope_t2v.safetensors", init_steps=STEPS)


def test_client_finishes_on_the_other_server_after_one_is_killed_mid_chunk(comfy_server, comfy, second_server,
                                                                           tmp_path):
    # the reference: the whole video in one prompt (text init, then 8 CAM chunks with the same prompts)
    ref_graph = text_to_video_graph(prompt=PROMPTS[0], steps=STEPS)
    ref_graph["4"] = {"class_type": "CAMExtendChunk", "inputs": {
        "model": ["1", 0], "stream": ["3", 0], "prompt": "\n".join(PROMPTS), "negative_prompt": "",
        "frames_to_add": 8 * CHUNKS, "steps": STEPS, "guidance": 7.5, "eta": 1.0, "seed": 33,
        "per_line_prompts": True}}
    ref_graph["5"]["inputs"]["stream"] = ["4", 0]
    ref_graph["7"] = {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "frames/resume_ref"}}
    ref = saved_frames(comfy, run_ok(comfy, ref_graph), tmp_path / "ref")
    assert ref.shape == (16 + 8 * CHUNKS, TINY_SIZE, TINY_SIZE, 3)

    single = stream_client.StreamRun(job(), [comfy_server.url], tmp_path / "single", log=lambda m: None)
    single_mp4 = single.run(tmp_path / "single.mp4")
    assert np.array_equal(segment_frames(tmp_path / "single"), ref)

    killed_at = {}

    def kill_mid_chunk(step, server, value, total):
        # the 5th step, after its first of 2 denoising steps: the server dies in the middle of the chunk
        if step == 4 and server.url == second_server.url and value == 1 and not killed_at:
            killed_at.update(step=step, pid=second_server.proc.pid)
            os.kill(second_server.proc.pid, signal.SIGKILL)

    used = []
    run = stream_client.StreamRun(job(), [second_server.url, comfy_server.url], tmp_path / "two",
                                  on_progress=kill_mid_chunk, log=used.append)
    two_mp4 = run.run(tmp_path / "two.mp4")
    assert killed_at.get("step") == 4, f"the server was not killed mid-chunk: {used}"
    assert not second_server.alive()
    steps_on = [line.rsplit(" on ", 1)[1] for line in used if line.startswith("step ") and " on " in line
                and "chunks" in line]
    assert steps_on[:5] == [second_server.url, comfy_server.url] * 2 + [second_server.url], steps_on
    assert steps_on[5:] == [comfy_server.url] * 4, steps_on  # step 4 again, then 5..7, on the survivor
    assert [(k, url) for k, url, why in run.failures] == [(4, second_server.url)]
    assert "died" in run.failures[0][2]

    # the same video as the single-server run, frame for frame, and as the one-prompt run, PNG for PNG
    assert np.array_equal(segment_frames(tmp_path / "two"), ref)
    a, b = read_video_frames(single_mp4), read_video_frames(two_mp4)
    assert a.shape == (16 + 8 * CHUNKS, TINY_SIZE, TINY_SIZE, 3) and np.array_equal(a, b)
    # nothing half-written is left as a finished segment or state
    work = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert work == ["run.json"] + [f"seg_{k:05}" for k in range(CHUNKS)] + [f"state_{k:05}.safetensors"
                                                                            for k in range(CHUNKS)], work
    counts = [len(list((tmp_path / "two" / f"seg_{k:05}").glob("*.png"))) for k in range(CHUNKS)]
    assert counts == [16 + 8] + [8] * (CHUNKS - 1)
    dead_states = sorted(p.name for p in (second_server.output_dir / "stream_states" / run.run_id).iterdir())
    assert dead_states == [f"step_{k:05}_00001_.safetensors" for k in (0, 2)], dead_states
    assert not list(tmp_path.glob(".*partial*"))


def test_client_continues_its_own_work_folder(comfy_server, tmp_path):
    """Steps of N chunks (the last one shorter); a client started again on its work folder does not redo
    finished steps; another job in the same folder is refused."""
    small = stream_client.Job(prompts=PROMPTS, chunks=3, chunks_per_step=2, steps=STEPS,
                              model="tiny_streamingt2v.safetensors", dtype="fp32",
                              t2v_unet="tiny_modelscope_t2v.safetensors", init_steps=STEPS)
    logs = []
    stream_client.StreamRun(small, [comfy_server.url], tmp_path / "w", log=logs.append).run(tmp_path / "a.mp4")
    assert [line.split(" on ")[0] for line in logs] == ["step 0/2: chunks [0, 1]", "step 1/2: chunks [2]"]
    assert [len(list((tmp_path / "w" / f"seg_{k:05}").glob("*.png"))) for k in (0, 1)] == [16 + 16, 8]
    again = []
    stream_client.StreamRun(small, [comfy_server.url], tmp_path / "w", log=again.append).run(tmp_path / "b.mp4")
    assert again == [f"continuing {tmp_path / 'w'}: 2 step(s) already done"]
    assert np.array_equal(read_video_frames(tmp_path / "a.mp4"), read_video_frames(tmp_path / "b.mp4"))
    with pytest.raises(ValueError, match="belongs to a run with other settings"):
        stream_client.StreamRun(stream_client.Job(prompts=PROMPTS, chunks=3), [comfy_server.url], tmp_path / "w")
