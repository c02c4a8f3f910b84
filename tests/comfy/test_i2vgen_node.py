"""The I2VGen-XL enhancer node in a real headless ComfyUI (fixtures: tests/support/server_fixtures.py): a tiny
random-weight I2VGen-XL folder (tests/support/i2vgen_tiny.py, 16x32 canvas instead of 720x1280) loaded by
LoadStreamingT2VRefiner, 40x24 frames -> I2VGenXLEnhancer at 32x16 -> CreateVideo -> SaveVideo, every frame kept.

The folder is written into the session's models/streamingt2v_refiner only for this module and removed after, so
the other refiner tests keep seeing their one tiny refiner."""
from __future__ import annotations

import shutil

import pytest

from tests.support import i2vgen_tiny
from tests.support.comfy_client import read_video_info
from tests.support.graphs import (INPUT_COLOR, failed_before_work, images_graph, rejected, run_ok, saved_frames,
                                  the_mp4)

pytestmark = [pytest.mark.comfy, pytest.mark.i2vgen]
NAME = "tiny_i2vgen_xl"
INPUTS = ["refiner", "images", "prompt", "negative_prompt", "strength", "steps", "guidance", "fps", "chunk",
          "overlap", "randomized_blending", "seed", "width", "height"]


@pytest.fixture(scope="module")
def i2vgen_folder(tiny_models_dir):
    folder = i2vgen_tiny.write_folder(tiny_models_dir / "streamingt2v_refiner" / NAME)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def enhance_graph(frames: int, prefix: str, **enhance) -> dict:
    inputs = {"refiner": ["1", 0], "images": ["2", 0], "prompt": "high quality", "negative_prompt": "blurry",
              "strength": 0.5, "steps": 4, "guidance": 9.0, "fps": 38, "chunk": 8, "overlap": 3,
              "randomized_blending": True, "seed": 8, "width": 32, "height": 16, "memory": "low vram",
              "anchor": ["6", 0]}
    inputs.update(enhance)
    return {
        "1": {"class_type": "LoadStreamingT2VRefiner", "inputs": {"refiner_name": NAME, "dtype": "fp32"}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 24, "batch_size": frames,
                                                      "color": INPUT_COLOR}},
        "6": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 1, "color": 0xCC6633}},
        "3": {"class_type": "I2VGenXLEnhancer", "inputs": inputs},
        "4": {"class_type": "CreateVideo", "inputs": {"images": ["3", 0], "fps": 8.0}},
        "5": {"class_type": "SaveVideo", "inputs": {"video": ["4", 0], "filename_prefix": prefix, "format": "mp4",
                                                    "codec": "h264"}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix + "_png"}},
    }


def test_node_inputs_in_order(comfy, i2vgen_folder):
    info = comfy.object_info()["I2VGenXLEnhancer"]
    assert info["input_order"]["required"] == INPUTS
    assert info["input_order"]["optional"] == ["memory", "anchor"]
    assert info["output"] == ["IMAGE"] and info["category"] == "StreamingT2V/refine"
    req = info["input"]["required"]
    assert (req["strength"][1]["default"], req["steps"][1]["default"], req["guidance"][1]["default"],
            req["fps"][1]["default"], req["chunk"][1]["default"], req["overlap"][1]["default"],
            req["width"][1]["default"], req["height"][1]["default"]) == (0.97, 30, 9.0, 38, 38, 12, 1280, 720)
    assert req["prompt"][1]["default"] == "High Quality, HQ, detailed."


def test_enhance_runs_and_keeps_every_frame(comfy, i2vgen_folder, tmp_path):
    # 15 frames: not (8 - 3)(n - 1) + 8, so the official code would keep 13
    entry = run_ok(comfy, enhance_graph(15, "video/i2vgen_tiny"))
    info = read_video_info(the_mp4(comfy, entry, tmp_path))
    assert (info.frames, info.width, info.height) == (15, 32, 16)
    frames = saved_frames(comfy, entry, tmp_path / "png")
    assert frames.shape == (15, 16, 32, 3)
    assert frames.reshape(15, -1).std(axis=1).max() > 0  # the model changed the flat input


def test_wrong_family_is_refused_with_the_node_to_use(comfy, i2vgen_folder):
    g = enhance_graph(6, "video/i2vgen_wrong")
    g["1"]["inputs"]["refiner_name"] = "tiny_ms_vid2vid"
    failed_before_work(comfy, g, "I2VGenXLEnhancer", "tiny_ms_vid2vid", "RandomizedBlendRefiner")


def test_bad_settings_rejected_at_validation(comfy, i2vgen_folder):
    rejected(comfy, enhance_graph(6, "video/i2vgen_bad", chunk=8, overlap=8), "3", "chunk", "larger than overlap")
    rejected(comfy, enhance_graph(6, "video/i2vgen_bad", strength=0.1, steps=4), "3", "strength", "runs no step")
    rejected(comfy, enhance_graph(6, "video/i2vgen_bad", width=36), "3", "width", "multiple of 8")


def test_the_streamingt2v_refiner_node_sends_i2vgen_to_its_node(comfy, i2vgen_folder):
    g = images_graph(6, prefix="video/i2vgen_in_refiner")
    g["1"]["inputs"]["refiner_name"] = NAME
    failed_before_work(comfy, g, "RandomizedBlendRefiner", NAME, "I2VGenXLEnhancer")
