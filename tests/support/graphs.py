"""Graphs and run helpers the real-server tests share (tests/comfy, tests/browser): API prompts built from
the tiny models, running them, reading what they wrote, and the checks for input refused before any work.

The tiny models run at 64x64; steps are cut to 2 in every prompt so the suite stays fast on 2 cores."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from tests.support.comfy_client import ComfyClient, PromptRejected, describe_failure, execution_error, status_str
from tests.support.paths import ROOT

WORKFLOWS = ROOT / "workflows"
TINY_SIZE = 64  # the tiny model's resolution
STEPS = 2
CONTINUE_INPUT = "streamingt2v_continue_example.mp4"
CONTINUE_INPUT_FRAMES = 24

# the tiny refiner (tools/make_tiny_models.py -> models/streamingt2v_refiner/tiny_ms_vid2vid)
REFINER = "tiny_ms_vid2vid"
CANVAS_HW = (80, 128)      # tiny_v2v_config.json video.pixel_hw
CONTENT = 80               # 64x64 fitted into 80x128 -> 80x80
REFINE_STEPS = 2
OFFICIAL = {"strength_step": 600, "steps": 30, "guidance": 7.5, "rescale": 0.2, "chunk": 24, "overlap": 8}
INPUT_COLOR = 0x3366CC


def fast(graph: dict, steps: int = STEPS) -> dict:
    """A copy of an API prompt with every `steps` input cut down."""
    g = copy.deepcopy(graph)
    for node in g.values():
        if "steps" in node["inputs"]:
            node["inputs"]["steps"] = steps
    return g


def stream_graph(frames_to_add=16, seed=33, steps=STEPS, init_frames=16, prefix="video/st2v_test", pngs=False,
                 **extend):
    """EmptyImage frames -> init from frames -> CAMExtendChunk -> ChunkAssembler -> SaveVideo (no stage 1);
    with `pngs`, the frames are also saved losslessly (SaveImage) for exact comparisons."""
    g = {
        "1": {"class_type": "LoadStreamingT2V", "inputs": {"ckpt_name": "tiny_streamingt2v.safetensors", "dtype": "fp32"}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": TINY_SIZE, "height": TINY_SIZE, "batch_size": init_frames,
                                                      "color": 0x3366CC}},
        "3": {"class_type": "StreamingT2VInitFromFrames", "inputs": {"model": ["1", 0], "frames": ["2", 0], "width": 0,
                                                                     "height": 0, "resize": "center crop"}},
        "4": {"class_type": "CAMExtendChunk", "inputs": {"model": ["1", 0], "stream": ["3", 0], "prompt": "a test video",
                                                         "negative_prompt": "", "frames_to_add": frames_to_add,
                                                         "steps": steps, "guidance": 7.5, "eta": 1.0, "seed": seed,
                                                         "per_line_prompts": False, **extend}},
        "5": {"class_type": "ChunkAssembler", "inputs": {"stream": ["4", 0], "fps": 8.0}},
        "6": {"class_type": "SaveVideo", "inputs": {"video": ["5", 2], "filename_prefix": prefix, "format": "mp4",
                                                    "codec": "h264"}},
    }
    if pngs:
        g["9"] = {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": prefix.replace("video/", "frames/")}}
    return g


def run_ok(client: ComfyClient, graph: dict, timeout: float = 600) -> dict:
    entry = client.run(graph, timeout=timeout)
    assert status_str(entry) == "success", describe_failure(entry)
    return entry


def run_watched(client: ComfyClient, graph: dict, node: str, timeout: float = 600) -> tuple[list[dict], list]:
    """Run a prompt (on a client id of its own) while listening: the websocket `progress` messages of `node`,
    and the (format, PIL image) of every preview image sent meanwhile."""
    client = ComfyClient(client.url)  # previews carry no prompt id: a fresh client id sees only this prompt's
    with client.listen() as ws:
        pid = client.post_prompt(graph)
        entry = client.wait(pid, timeout=timeout)
        assert status_str(entry) == "success", describe_failure(entry)
        ws.wait_for("execution_success", pid, timeout=30)  # the socket has delivered everything before it
        progress = [d for d in ws.of_type("progress", pid) if d.get("node") == node]
        previews = ws.previews()
    return progress, previews


def the_mp4(client: ComfyClient, entry: dict, dest: Path) -> Path:
    paths = [p for p in client.download_outputs(entry, dest) if p.suffix == ".mp4"]
    assert len(paths) == 1, f"expected one mp4, got {paths}"
    return paths[0]


def saved_frames(client: ComfyClient, entry: dict, dest: Path) -> np.ndarray:
    """The frames SaveImage wrote (PNG: exact up to ComfyUI's 8-bit rounding), in order, (T, H, W, 3) uint8."""
    from PIL import Image

    paths = sorted(p for p in client.download_outputs(entry, dest) if p.suffix == ".png")
    assert paths, "no PNG frames in the outputs"
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def segment_frames(work: Path) -> np.ndarray:
    """The frames of a tools/stream_client.py work folder (its seg_*/ PNGs), in order, (T, H, W, 3) uint8."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(Path(work).glob("seg_*/*.png"))])


def write_input_video(path: Path, frames: int, width: int, height: int) -> None:
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            img = np.clip(rng.normal(128, 40, (height, width, 3)) + i * 3, 0, 255).astype(np.uint8)
            for packet in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


@pytest.fixture(scope="module")
def continue_input(comfy_server) -> Path:
    """The example video the continue_video workflow loads, in the server's input folder (not square, not
    64x64, so the init node resizes it)."""
    path = comfy_server.input_dir / CONTINUE_INPUT
    if not path.exists():
        write_input_video(path, CONTINUE_INPUT_FRAMES, 96, 80)
    return path


def images_graph(frames: int, width: int = TINY_SIZE, height: int = TINY_SIZE, prefix: str = "video/st2v_refine",
                 pngs: bool = False, **refine) -> dict:
    """EmptyImage frames -> RandomizedBlendRefiner -> CreateVideo -> SaveVideo (no stage 2)."""
    g = {
        "1": {"class_type": "LoadStreamingT2VRefiner", "inputs": {"refiner_name": REFINER, "dtype": "fp32"}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": frames,
                                                      "color": INPUT_COLOR}},
        "3": {"class_type": "RandomizedBlendRefiner", "inputs": {
            "refiner": ["1", 0], "images": ["2", 0], "prompt": "a test video", "negative_prompt": "",
            **dict(OFFICIAL, steps=REFINE_STEPS), "seed": 5, "output": "crop to content", **refine}},
        "4": {"class_type": "CreateVideo", "inputs": {"images": ["3", 0], "fps": 8.0}},
        "5": {"class_type": "SaveVideo", "inputs": {"video": ["4", 0], "filename_prefix": prefix, "format": "mp4",
                                                    "codec": "h264"}},
    }
    if pngs:
        g["6"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 0],
                                                        "filename_prefix": prefix.replace("video/", "frames/")}}
    return g


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


