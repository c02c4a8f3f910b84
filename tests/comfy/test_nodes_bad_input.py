"""Bad input through the API: each answered before any denoising, with a message naming the input, and
nothing written to the output folder."""
from __future__ import annotations

import pytest

from tests.support.graphs import (TINY_SIZE, failed_before_work, no_new_output, rejected, run_ok,  # noqa: F401 (fixture)
                                  stream_graph, text_to_video_graph, the_mp4)

pytestmark = pytest.mark.compat  # both ComfyUI legs (tools/test.sh --comfy033)


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
    from tests.support.comfy_client import read_video_info

    entry = run_ok(comfy, stream_graph(frames_to_add=8, seed=304, prefix="video/st2v_after_bad"))
    info = read_video_info(the_mp4(comfy, entry, tmp_path))
    assert (info.frames, info.width) == (24, TINY_SIZE)
