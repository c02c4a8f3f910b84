"""Bad input through the API: each answered before any denoising, with a message naming the input, and
nothing written to the output folder."""
from __future__ import annotations

import pytest

from comfy_client import ComfyClient, PromptRejected, execution_error, status_str
from test_nodes_streaming import TINY_SIZE, stream_graph


def output_listing(server) -> set:
    return {p.relative_to(server.output_dir) for p in server.output_dir.rglob("*") if p.is_file()}


def text_to_video_graph(**init) -> dict:
    return {
        "1": {"class_type": "LoadStreamingT2V", "inputs": {"ckpt_name": "tiny_streamingt2v.safetensors", "dtype": "fp32"}},
        "2": {"class_type": "LoadModelScopeT2V", "inputs": {"unet_name": "tiny_modelscope_t2v.safetensors", "dtype": "fp32"}},
        "3": {"class_type": "StreamingT2VInitFromText", "inputs": {"model": ["1", 0], "t2v_unet": ["2", 0], "prompt": "a cat",
                                                                   "negative_prompt": "", "steps": 2, "guidance": 9.0,
                                                                   "seed": 33, "width": 0, "height": 0, **init}},
        "5": {"class_type": "ChunkAssembler", "inputs": {"stream": ["3", 0], "fps": 8.0}},
        "6": {"class_type": "SaveVideo", "inputs": {"video": ["5", 2], "filename_prefix": "video/st2v_bad", "format": "mp4",
                                                    "codec": "h264"}},
    }


def rejected(client: ComfyClient, graph: dict, node: str, input_name: str, *words: str) -> str:
    """The prompt fails validation (HTTP 400) at `node`, and the message names the input."""
    with pytest.raises(PromptRejected) as err:
        client.post_prompt(graph)
    assert err.value.status == 400
    assert node in err.value.node_errors, err.value.body
    text = " ".join(err.value.messages())
    for w in (input_name,) + words:
        assert w in text, f"'{w}' not in the answer: {text}"
    return text


def forget_cached_outputs(client: ComfyClient) -> None:
    """Run a tiny prompt without the pack's nodes: ComfyUI's (classic) cache keeps only the outputs of the
    nodes of the last prompt, so a model a loader produced earlier is no longer cached."""
    entry = client.run({"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                                     "color": 0}},
                        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}, timeout=120)
    assert status_str(entry) == "success", entry.get("status")


def failed_before_work(client: ComfyClient, graph: dict, node_type: str, *words: str, not_run=()) -> str:
    """The prompt is accepted but the node raises at once: execution_error naming the input, and no
    denoising step ran (no progress messages at all). The nodes in `not_run` (e.g. the model loader)
    neither ran nor came from the cache: the error came before they were requested."""
    if not_run:
        forget_cached_outputs(client)
    with client.listen() as ws:
        pid = client.post_prompt(graph)
        entry = client.wait(pid, timeout=300)
        ws.wait_for("execution_error", pid, timeout=60)
        progress = ws.of_type("progress", pid)
        cached = ws.wait_for("execution_cached", pid, timeout=30)["nodes"]
        ran = {d.get("node") for d in ws.of_type("executing", pid)} - {None}
    for node in not_run:
        assert node not in cached, f"node {node} came from the cache: the check would prove nothing"
        assert node not in ran, f"node {node} ({graph[node]['class_type']}) ran before the error; ran: {sorted(ran)}"
    assert status_str(entry) == "error"
    err = execution_error(entry)
    assert err["node_type"] == node_type, err
    assert err["exception_type"].endswith("ValueError"), err
    for w in words:
        assert w in err["exception_message"], err["exception_message"]
    assert not progress, f"work started before the error: {progress[:3]}"
    return err["exception_message"]


@pytest.fixture
def no_new_output(comfy_server):
    before = output_listing(comfy_server)
    yield
    assert output_listing(comfy_server) == before, "a failed run wrote to the output folder"


def test_model_file_that_is_not_there(comfy, no_new_output):
    g = stream_graph()
    g["1"]["inputs"]["ckpt_name"] = "no_such_streamingt2v.safetensors"
    text = rejected(comfy, g, "1", "ckpt_name", "no_such_streamingt2v.safetensors", "models/streamingt2v")
    assert "tiny_streamingt2v.safetensors" in text  # what is there instead
    g = text_to_video_graph()
    g["2"]["inputs"]["unet_name"] = "absent_unet.safetensors"
    rejected(comfy, g, "2", "unet_name", "absent_unet.safetensors", "diffusion_models")


def test_fewer_than_8_input_frames(comfy, no_new_output):
    # The model inputs of the init node and of CAMExtendChunk are lazy: the model is never loaded.
    msg = failed_before_work(comfy, stream_graph(init_frames=5, seed=301), "StreamingT2VInitFromFrames",
                             "frames", "5 frame", "at least 8", not_run=["1"])
    assert msg.startswith("frames:")
    g = stream_graph(init_frames=5)
    del g["4"]
    g["5"]["inputs"]["stream"] = ["3", 0]
    failed_before_work(comfy, g, "StreamingT2VInitFromFrames", "frames:", "5 frame", "at least 8", not_run=["1"])


@pytest.mark.parametrize("node,field,value", [("3", "width", 100), ("3", "height", 60)])
def test_size_not_divisible_by_8(comfy, no_new_output, node, field, value):
    g = stream_graph()
    g[node]["inputs"][field] = value
    rejected(comfy, g, node, field, str(value), "divisible by 8")
    g = text_to_video_graph(**{field: value + 2})
    rejected(comfy, g, "3", field, str(value + 2), "divisible by 8")


def test_zero_frames_to_add(comfy, no_new_output):
    rejected(comfy, stream_graph(frames_to_add=0), "4", "frames_to_add", "0", "1 to")


def test_anchor_index_beyond_the_frames(comfy, no_new_output):
    g = stream_graph(seed=302)
    g["7"] = {"class_type": "AnchorFrameAPM", "inputs": {"model": ["1", 0], "frames": ["2", 0], "index": 16}}
    g["4"]["inputs"]["anchor"] = ["7", 0]
    failed_before_work(comfy, g, "AnchorFrameAPM", "index", "16", "16 frame", "0 to 15")
    # The anchor node's model input is lazy: when nothing else needs the model, it is never loaded.
    g = {"1": g["1"], "2": g["2"], "7": g["7"],
         "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 1]}}}
    failed_before_work(comfy, g, "AnchorFrameAPM", "index: 16", "16 frame", "0 to 15", not_run=["1"])


def test_empty_prompt_list(comfy, no_new_output):
    g = stream_graph(per_line_prompts=True)
    g["4"]["inputs"]["prompt"] = "\n   \n\t\n"
    rejected(comfy, g, "4", "prompt", "empty", "per_line_prompts")
    # the same through a link (checked when the node runs, still before any step)
    g["8"] = {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "  \n "}}
    g["4"]["inputs"]["prompt"] = ["8", 0]
    g["4"]["inputs"]["seed"] = 303
    failed_before_work(comfy, g, "CAMExtendChunk", "prompt", "empty")


def test_the_server_still_works_after_bad_input(comfy, tmp_path):
    from test_nodes_streaming import run_ok, the_mp4
    from comfy_client import read_video_info

    entry = run_ok(comfy, stream_graph(frames_to_add=8, seed=304, prefix="video/st2v_after_bad"))
    info = read_video_info(the_mp4(comfy, entry, tmp_path))
    assert (info.frames, info.width) == (24, TINY_SIZE)
