"""RandomizedBlendContextWindows on a native ComfyUI video model, in a real headless ComfyUI: a tiny
random-weight Wan 2.1 t2v DiT and Wan 2.1 VAE (tools/make_tiny_wan.py) that core's UNETLoader/VAELoader build
from their state dicts, sampled by KSampler, KSamplerAdvanced and SamplerCustomAdvanced in randomized-blend
context windows; the two native workflows, rewritten to the tiny models; bad window sizes.

umT5-XXL cannot be tiny, so the text conditioning comes from a test-only node (tests/support/comfy_test_nodes,
linked in by the server fixture): TinyWanTextConditioning, [1, tokens, 4096] rows seeded from the text.

Sizes: 32x32 pixels (Wan: 8x spatial, 2x2 patches -> 2x2 tokens per frame), 41 video frames = 11 latent
frames, windows of 17 video frames (5 latent) overlapping by 8 (2 latent): three windows, two overlaps."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.support.comfy_client import combo_options, output_files, read_video_info
from tests.support.graphs import (STEPS, WORKFLOWS, failed_before_work, fast, forget_cached_outputs, rejected, run_ok,
                                  saved_frames, write_input_video)

pytestmark = [pytest.mark.native_blend, pytest.mark.compat]

WAN = "tiny_wan21_t2v.safetensors"
VAE = "tiny_wan_vae.safetensors"
SIZE = 32
FRAMES = 41  # 4n + 1 video frames: 11 latent frames
CONTEXT = {"context_length": 17, "context_overlap": 8}  # video frames: 5 / 2 latent frames
TOKENS = 8
REFINE_INPUT = "streamingt2v_long_example.mp4"  # the file refine_long_video_native_api.json loads


def text(prompt: str) -> dict:
    return {"class_type": "TinyWanTextConditioning", "inputs": {"text": prompt, "tokens": TOKENS}}


def wan_graph(sampler: str = "KSampler", context_seed: int = 7, prefix: str = "frames/wan_tiny",
              **context) -> dict:
    """UNETLoader -> RandomizedBlendContextWindows -> `sampler` (KSampler, KSamplerAdvanced or
    SamplerCustomAdvanced) on an empty 41-frame latent -> VAEDecode -> SaveImage (lossless PNGs, one per frame).
    Node ids are the same in every variant, so the loaders' outputs stay cached between prompts."""
    g = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": WAN, "weight_dtype": "default"}},
        "2": {"class_type": "RandomizedBlendContextWindows", "inputs": {
            "model": ["1", 0], **CONTEXT, "seed": context_seed, "frame_dim": "auto", "length_unit": "video frames",
            "context_schedule": "standard_static", **context}},
        "3": text("a tiny test video"),
        "4": text("blurry"),
        "5": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": SIZE, "height": SIZE, "length": FRAMES,
                                                                  "batch_size": 1}},
        "7": {"class_type": "VAELoader", "inputs": {"vae_name": VAE}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["7", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }
    common = {"cfg": 5.0, "sampler_name": "euler", "scheduler": "simple"}
    if sampler == "KSampler":
        g["6"] = {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "seed": 33, "steps": STEPS, **common, "positive": ["3", 0], "negative": ["4", 0],
            "latent_image": ["5", 0], "denoise": 1.0}}
    elif sampler == "KSamplerAdvanced":
        g["6"] = {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["2", 0], "add_noise": "enable", "noise_seed": 33, "steps": STEPS, **common,
            "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0], "start_at_step": 0,
            "end_at_step": 10000, "return_with_leftover_noise": "disable"}}
    elif sampler == "SamplerCustomAdvanced":
        g.update({
            "10": {"class_type": "RandomNoise", "inputs": {"noise_seed": 33}},
            "11": {"class_type": "CFGGuider", "inputs": {"model": ["2", 0], "positive": ["3", 0],
                                                         "negative": ["4", 0], "cfg": common["cfg"]}},
            "12": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": common["sampler_name"]}},
            "13": {"class_type": "BasicScheduler", "inputs": {"model": ["2", 0], "scheduler": common["scheduler"],
                                                              "steps": STEPS, "denoise": 1.0}},
        })
        g["6"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["10", 0], "guider": ["11", 0], "sampler": ["12", 0], "sigmas": ["13", 0],
            "latent_image": ["5", 0]}}
    else:
        raise ValueError(sampler)
    return g


def run_frames(comfy, graph: dict, dest, must_run=("6",)) -> np.ndarray:
    """Run the prompt, check the nodes in `must_run` executed (were not served from ComfyUI's cache), and
    return the PNG frames SaveImage wrote, (T, H, W, 3) uint8."""
    with comfy.listen() as ws:
        pid = comfy.post_prompt(graph)
        entry = comfy.wait(pid, timeout=300)
        assert entry["status"]["status_str"] == "success", entry["status"]
        ws.wait_for("execution_success", pid, timeout=30)
        cached = set(ws.wait_for("execution_cached", pid, timeout=30)["nodes"])
    assert not cached & set(must_run), f"{sorted(cached & set(must_run))} came from the cache"
    return saved_frames(comfy, entry, dest)


def assert_video_frames(frames: np.ndarray):
    assert frames.shape == (FRAMES, SIZE, SIZE, 3), frames.shape
    assert frames.std() > 1.0, "the frames are flat: the tiny model gave a degenerate output"


def test_core_loaders_list_and_load_the_tiny_wan_model_and_vae(comfy_server, comfy, tmp_path):
    assert WAN in combo_options(comfy.object_info("UNETLoader"), "unet_name")
    assert VAE in combo_options(comfy.object_info("VAELoader"), "vae_name")
    forget_cached_outputs(comfy)  # so the loaders run (and log) in this test, whatever ran before
    start = len(comfy_server.log_text())
    assert_video_frames(run_frames(comfy, wan_graph(prefix="frames/wan_ksampler"), tmp_path, ("1", "6", "7")))
    log = comfy_server.log_text()[start:]  # what loading the tiny files logged
    # a state dict that missed ComfyUI's layout still loads, with these warnings (comfy/sd.py)
    for warning in ("unet missing", "unet unexpected", "left over keys in diffusion model", "Missing VAE keys"):
        assert warning not in log, f"'{warning}' in the server log: the tiny files do not match core's layout"


@pytest.mark.parametrize("sampler", ["KSamplerAdvanced", "SamplerCustomAdvanced"])
def test_other_samplers_sample_in_randomized_blend_windows(comfy, tmp_path, sampler):
    frames = run_frames(comfy, wan_graph(sampler, prefix=f"frames/wan_{sampler}"), tmp_path)
    assert_video_frames(frames)


def test_same_context_seed_same_pixels_other_seed_other_pixels(comfy, tmp_path):
    # A, B, A: the graph changes between runs, so the third run samples again (checked: not from the cache)
    a = run_frames(comfy, wan_graph(context_seed=101, prefix="frames/wan_seed_a"), tmp_path / "a", ("2", "6", "8"))
    b = run_frames(comfy, wan_graph(context_seed=202, prefix="frames/wan_seed_b"), tmp_path / "b", ("2", "6", "8"))
    again = run_frames(comfy, wan_graph(context_seed=101, prefix="frames/wan_seed_a2"), tmp_path / "a2",
                       ("2", "6", "8"))
    assert np.array_equal(a, again), "same context seed, different frames"
    assert not np.array_equal(a, b), "another context seed gave the same frames: the cuts changed nothing"


def test_a_window_longer_than_the_video_is_refused_before_sampling(comfy):
    g = wan_graph(context_length=81, prefix="frames/wan_too_long")  # 21 latent frames on an 11-frame latent
    failed_before_work(comfy, g, "KSampler", "context_length", "longer than the video")


def test_overlap_not_below_length_is_refused_at_validation(comfy):
    g = wan_graph(context_length=17, context_overlap=17, prefix="frames/wan_bad_overlap")
    rejected(comfy, g, "2", "context_overlap", "smaller than context_length")


# -- the shipped native workflows, rewritten to the tiny models ------------------------------------------

def tiny_native_workflow(name: str) -> dict:
    """workflows/<name>_api.json with the real Wan 2.1 files swapped for the tiny ones, umT5 text encoding for
    TinyWanTextConditioning, 32x32 frames, 41-frame latents, windows of 17/8 video frames and 2 steps.
    Fails on a node it does not know how to shrink, so a changed workflow is noticed."""
    g = fast(json.loads((WORKFLOWS / f"{name}_api.json").read_text()))
    clip_loaders = {k for k, n in g.items() if n["class_type"] == "CLIPLoader"}
    out = {}
    for key, node in g.items():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CLIPLoader":
            continue
        if kind == "CLIPTextEncode":
            assert inputs["clip"][0] in clip_loaders, inputs
            node = text(inputs["text"])
        elif kind == "UNETLoader":
            inputs["unet_name"] = WAN
        elif kind == "VAELoader":
            inputs["vae_name"] = VAE
        elif kind in ("EmptyHunyuanLatentVideo", "ImageScale"):
            inputs.update(width=SIZE, height=SIZE)
            if kind == "EmptyHunyuanLatentVideo":
                inputs["length"] = FRAMES
        elif kind in ("RandomizedBlendContextWindows", "WanContextWindowsManual"):
            inputs.update(CONTEXT)
        elif kind == "KSampler":
            assert inputs["steps"] == STEPS  # fast() cut it
        elif kind == "LoadVideo":
            assert inputs["file"] == REFINE_INPUT, inputs
        elif kind not in ("GetVideoComponents", "VAEEncode", "VAEDecodeTiled", "CreateVideo", "SaveVideo"):
            raise AssertionError(f"{name}: no tiny rewrite for node {key} ({kind})")
        out[key] = node
    for key, node in out.items():  # nothing may still use the dropped text encoder
        for v in node["inputs"].values():
            assert not (isinstance(v, list) and v and v[0] in clip_loaders), (key, v)
    return out


def saved_videos(comfy, entry: dict, dest) -> dict:
    """{filename prefix's last part: VideoInfo} of the videos the prompt saved."""
    paths = [p for p in comfy.download_outputs(entry, dest) if p.suffix == ".mp4"]
    return {p.name.rsplit("_", 2)[0]: read_video_info(p) for p in paths}


def test_refine_long_video_native_workflow_keeps_the_input_frames(comfy_server, comfy, tmp_path):
    write_input_video(comfy_server.input_dir / REFINE_INPUT, FRAMES, 48, 40)  # not 32x32: ImageScale resizes
    entry = run_ok(comfy, tiny_native_workflow("refine_long_video_native"))
    videos = saved_videos(comfy, entry, tmp_path)
    assert list(videos) == ["refined_native"], videos
    info = videos["refined_native"]
    assert (info.frames, info.width, info.height) == (FRAMES, SIZE, SIZE)
    assert info.fps == pytest.approx(8.0)  # the input's rate, passed through GetVideoComponents


def test_long_video_native_context_workflow_writes_both_branches(comfy, tmp_path):
    entry = run_ok(comfy, tiny_native_workflow("long_video_native_context"))
    assert len(output_files(entry)) == 2, output_files(entry)
    videos = saved_videos(comfy, entry, tmp_path)
    assert set(videos) == {"native_context_randomized", "native_context_pyramid"}, videos
    for info in videos.values():
        assert (info.frames, info.width, info.height) == (FRAMES, SIZE, SIZE)
