"""StreamingSVD in a real headless ComfyUI: the svd_long_video and svd_continue_video workflows on the oracle's
tiny checkpoint, interrupt during a chunk, and bad input refused before any sampling.

The tiny checkpoint (tests/support/svd_tiny.py, 2 GB, the official layout) is linked into the server's
models/checkpoints as StreamingSVD/model.safetensors, the name the workflows use; core's
ImageOnlyCheckpointLoader refuses its tiny widths, so the test-only TinySVDCheckpointLoader
(tests/support/comfy_test_nodes/tiny_svd.py) stands in for it with the same outputs. Frames are 128x64 (the
oracle's size), 2 steps per chunk and one chunk per run."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from tests.support.comfy_client import ComfyClient, messages, output_files, read_video_info, status_str
from tests.support.graphs import WORKFLOWS, failed_before_work, fast, no_new_output, run_ok, the_mp4, \
    saved_frames, segment_frames, write_input_video  # noqa: F401 (fixture)

# real-server tests (marker comfy, by folder), not oracle ones: `-m svd_oracle` stays under its 6-minute budget

CKPT = "StreamingSVD/model.safetensors"
WIDTH, HEIGHT = 128, 64
EXAMPLE_IMAGE = "streamingsvd_example.png"
CONTINUE_VIDEO = "streamingsvd_continue_example.mp4"
CONTINUE_FRAMES = 10


@pytest.fixture(scope="module")
def svd_server(comfy_server, tiny_models_dir, svd_tiny_checkpoint):
    from PIL import Image

    link = tiny_models_dir / "checkpoints" / CKPT
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(svd_tiny_checkpoint)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (96, 160, 3), dtype=np.uint8)).save(comfy_server.input_dir / EXAMPLE_IMAGE)
    write_input_video(comfy_server.input_dir / CONTINUE_VIDEO, CONTINUE_FRAMES, 160, 96)
    return comfy_server


def tiny(name: str, frames_to_add: int = 18, prefix: str | None = None, steps: int = 2) -> dict:
    """A shipped SVD workflow on the tiny checkpoint at 128x64, `steps` per chunk."""
    g = fast(json.loads((WORKFLOWS / f"{name}_api.json").read_text()), steps)
    for node in g.values():
        inputs = node["inputs"]
        if node["class_type"] == "ImageOnlyCheckpointLoader":
            node["class_type"] = "TinySVDCheckpointLoader"
        if node["class_type"] in ("SVD_img2vid_Conditioning", "ImageScale"):
            inputs.update(width=WIDTH, height=HEIGHT)
        if node["class_type"] == "StreamingSVDExtend":
            inputs["frames_to_add"] = frames_to_add
        if node["class_type"] == "SaveVideo":
            inputs.update(format="mp4", codec="h264")
            if prefix:
                inputs["filename_prefix"] = prefix
    return g


def node_of(graph: dict, class_type: str) -> str:
    (key,) = [k for k, v in graph.items() if v["class_type"] == class_type]
    return key


def with_pngs(graph: dict, prefix: str) -> dict:
    """The graph with the assembled frames also saved losslessly (SaveImage), for exact comparisons."""
    graph["90"] = {"class_type": "SaveImage", "inputs": {"images": [node_of(graph, "ChunkAssembler"), 0],
                                                         "filename_prefix": prefix}}
    return graph


def test_svd_long_video_runs_to_an_mp4_of_25_plus_18_frames_per_chunk(svd_server, tmp_path):
    client = ComfyClient(svd_server.url)
    graph = tiny("svd_long_video", frames_to_add=20, prefix="video/svd_long")  # 20 -> 2 chunks of 18
    entry = run_ok(client, graph)
    info = read_video_info(the_mp4(client, entry, tmp_path))
    assert (info.frames, info.width, info.height) == (25 + 2 * 18, WIDTH, HEIGHT)
    assert abs(info.fps - 12.0) < 1e-6
    text = entry["outputs"][node_of(graph, "StreamingSVDExtend")]["text"][0]
    assert "frames_to_add 20 -> 2 chunk(s) x 18 new frames = 36 frames (rounded up to whole chunks)" in text
    assert "SVD image: frame 6 of the 25 input frames" in text and "video: 25 -> 61 frames" in text


@pytest.fixture(scope="module")
def continued(svd_server, tmp_path_factory):
    """svd_continue_video for 1 chunk, its frames also as PNGs and its stream state saved: the history entry."""
    graph = with_pngs(tiny("svd_continue_video", prefix="video/svd_continued"), "frames/svd_cont")
    graph["91"] = {"class_type": "SaveStreamState", "inputs": {
        "stream": [node_of(graph, "StreamingSVDExtend"), 0], "filename_prefix": "stream_state/svd_test",
        "include_frames": False}}
    return run_ok(ComfyClient(svd_server.url), graph)


def test_svd_continue_video_extends_a_loaded_video(svd_server, continued, tmp_path):
    client = ComfyClient(svd_server.url)
    info = read_video_info(the_mp4(client, continued, tmp_path))
    assert (info.frames, info.width, info.height) == (CONTINUE_FRAMES + 18, WIDTH, HEIGHT)
    frames = saved_frames(client, continued, tmp_path / "png").astype(int)
    assert frames.shape == (CONTINUE_FRAMES + 18, HEIGHT, WIDTH, 3)
    assert np.abs(frames[CONTINUE_FRAMES:] - frames[CONTINUE_FRAMES - 1]).mean() > 1  # new frames, not copies


def test_interrupt_during_a_chunk_leaves_no_video_and_the_server_goes_on(svd_server, server_alive, tmp_path):
    client = ComfyClient(svd_server.url)
    graph = tiny("svd_long_video", frames_to_add=36, prefix="video/svd_interrupted")
    graph[node_of(graph, "StreamingSVDSigmas")]["inputs"]["steps"] = 200
    extend = node_of(graph, "StreamingSVDExtend")
    with client.listen() as ws:
        pid = client.post_prompt(graph)
        ws.wait_for("progress", pid, timeout=600, predicate=lambda d: d.get("node") == extend)
        client.interrupt()
        ws.wait_for("execution_interrupted", pid, timeout=300)
        entry = client.wait(pid, timeout=300)
    assert status_str(entry) == "error" and messages(entry, "execution_interrupted")
    assert not output_files(entry)
    assert not list((svd_server.output_dir / "video").glob("svd_interrupted*"))


def continue_graph(**scale) -> dict:
    graph = tiny("svd_continue_video", prefix="video/svd_bad")
    graph[node_of(graph, "ImageScale")]["inputs"].update(scale)
    return graph


@pytest.mark.parametrize("case,words", [
    ("too few frames", ("frames:", "5 frame(s) given, at least 7")),
    ("size", ("frames:", "100x64", "multiples of 64")),
])
def test_bad_frames_fail_before_any_model_loads(svd_server, no_new_output, case, words):
    client = ComfyClient(svd_server.url)
    graph = continue_graph(width=100) if case == "size" else continue_graph()
    if case == "too few frames":
        trim = {"class_type": "ImageFromBatch", "inputs": {"image": [node_of(graph, "ImageScale"), 0],
                                                           "batch_index": 0, "length": 5}}
        graph["80"] = trim
        graph[node_of(graph, "StreamingSVDExtend")]["inputs"]["frames"] = ["80", 0]
    loaders = (node_of(graph, "TinySVDCheckpointLoader"), node_of(graph, "LoadStreamingSVDCAM"))
    failed_before_work(client, graph, "StreamingSVDExtend", *words, not_run=loaders)


def test_a_model_that_is_not_svd_is_named(svd_server, no_new_output):
    client = ComfyClient(svd_server.url)
    graph = continue_graph()
    graph["81"] = {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_wan21_t2v.safetensors",
                                                          "weight_dtype": "default"}}
    graph[node_of(graph, "StreamingSVDExtend")]["inputs"]["model"] = ["81", 0]
    failed_before_work(client, graph, "StreamingSVDExtend", "model: this MODEL is WAN21", "SVD_img2vid",
                       "Image Only Checkpoint Loader")


def test_a_plain_svd_checkpoint_is_refused_by_the_cam_loader(svd_server, tiny_models_dir, no_new_output):
    from tests.support.svd_tiny import sparse_file, tiny_shapes

    plain = {k: s for k, s in tiny_shapes().items() if not k.startswith("controlnet.") and "merger" not in k}
    sparse_file(tiny_models_dir / "checkpoints" / "svd_xt_plain.safetensors", plain)
    client = ComfyClient(svd_server.url)
    graph = copy.deepcopy(continue_graph())
    graph[node_of(graph, "LoadStreamingSVDCAM")]["inputs"]["cam_name"] = "svd_xt_plain.safetensors"
    entry = client.run(graph, timeout=300)
    assert status_str(entry) == "error"
    err = messages(entry, "execution_error")[0][1]
    assert err["node_type"] == "LoadStreamingSVDCAM"
    assert "plain SVD checkpoint: it has no CAM" in err["exception_message"]


@pytest.fixture(scope="module")
def i2vgen_folder(tiny_models_dir):
    import shutil

    from tests.support import i2vgen_tiny

    folder = i2vgen_tiny.write_folder(tiny_models_dir / "streamingt2v_refiner" / "tiny_i2vgen_xl")
    yield folder.name
    shutil.rmtree(folder, ignore_errors=True)  # the refiner tests expect their one tiny refiner


@pytest.mark.i2vgen
def test_svd_long_video_full_streams_and_enhances_without_the_interpolation_pack(svd_server, i2vgen_folder,
                                                                              tmp_path):
    """svd_long_video_full up to the enhancer (the interpolation nodes come from ComfyUI-Tween, which the test
    server has not: tests/browser checks that exactly they are missing there); Create Video takes the
    enhanced frames instead of the interpolated ones. Every frame is kept: 25 + 18 = 43, which is not of the
    official (38 - 12)(n - 1) + 38 form."""
    from tests.support.external_standins import records

    graph = tiny("svd_long_video_full", prefix="video/svd_full")
    external = {k for k, v in graph.items() if v["class_type"] in records()}
    assert {graph[k]["class_type"] for k in external} == {"LoadEMAVFIModel", "EMAVFIInterpolate"}
    enhancer = node_of(graph, "I2VGenXLEnhancer")
    for key in external:
        del graph[key]
    graph[node_of(graph, "CreateVideo")]["inputs"]["images"] = [enhancer, 0]
    graph[node_of(graph, "LoadStreamingT2VRefiner")]["inputs"].update(refiner_name=i2vgen_folder, dtype="fp32")
    graph[enhancer]["inputs"].update(width=32, height=16)
    entry = run_ok(ComfyClient(svd_server.url), graph)
    info = read_video_info(the_mp4(ComfyClient(svd_server.url), entry, tmp_path))
    assert (info.frames, info.width, info.height) == (25 + 18, 32, 16)
    assert abs(info.fps - 24.0) < 1e-6


@pytest.fixture(scope="module")
def two_chunks(svd_server, tmp_path_factory):
    """svd_continue_video for 2 chunks in one prompt: its PNG frames (the reference of the resume tests)."""
    graph = with_pngs(tiny("svd_continue_video", 36, "video/svd_whole"), "frames/svd_whole")
    client = ComfyClient(svd_server.url)
    return saved_frames(client, run_ok(client, graph), tmp_path_factory.mktemp("svd_whole"))


@pytest.mark.resume
def test_svd_stream_step_continues_a_saved_stream_bit_for_bit(svd_server, continued, two_chunks, tmp_path):
    """svd_continue_video for 2 chunks == svd_continue_video for 1 chunk + Save Stream State (the `continued` run),
    then the shipped step workflow (Load Stream State (StreamingSVD) -> StreamingSVD Extend -> Save Stream State)
    for 1 more: the same frames, PNG for PNG (another seed in the step: the stream's generator goes on). The
    stream starts from a loaded video, not from core's first SVD chunk: core's VAE Decode splits a batch by free
    memory and SVD's temporal decoder treats each call as one clip, so that chunk can differ between two runs."""
    client = ComfyClient(svd_server.url)
    a = saved_frames(client, continued, tmp_path / "a")
    (saved,) = continued["outputs"]["91"]["stream_states"]
    step = tiny("svd_stream_step")
    step[node_of(step, "LoadStreamingSVDState")]["inputs"]["state"] = f"{saved['subfolder']}/{saved['filename']} [output]"
    step[node_of(step, "StreamingSVDExtend")]["inputs"]["seed"] = 4242
    step[node_of(step, "SaveImage")]["inputs"]["filename_prefix"] = "frames/svd_step"
    b = saved_frames(client, run_ok(client, step), tmp_path / "b")
    assert (a.shape[0], b.shape[0], two_chunks.shape[0]) == (CONTINUE_FRAMES + 18, 18, CONTINUE_FRAMES + 36)
    assert np.array_equal(np.concatenate([a, b]), two_chunks)


def tiny_svd_job(**settings):
    """tools/stream_client.py's StreamingSVD job on the tiny checkpoint (its test-only loader) at 128x64."""
    import sys

    sys.path.insert(0, str(WORKFLOWS.parent / "tools"))
    import stream_client

    class TinySVDJob(stream_client.SVDJob):
        def graph(self, *args):
            g = super().graph(*args)
            for node in g.values():
                if node["class_type"] == "ImageOnlyCheckpointLoader":
                    node["class_type"] = "TinySVDCheckpointLoader"
            return g

    return stream_client, TinySVDJob(model=CKPT, cam=CKPT, steps=2, init_steps=2, width=WIDTH, height=HEIGHT,
                                     **settings)


@pytest.mark.resume
def test_the_client_drives_a_streamingsvd_video_from_an_image_and_from_a_state(svd_server, continued, two_chunks,
                                                                              tmp_path):
    """tools/stream_client.py --family streamingsvd: from an image, step 0 is the first chunk by core's SVD nodes
    plus one CAM chunk (25 + 18 frames, 12 fps); from a saved state, its step equals the uninterrupted run."""
    client_module, job = tiny_svd_job(image=str(svd_server.input_dir / EXAMPLE_IMAGE), chunks=1)
    logs = []
    mp4 = client_module.StreamRun(job, [svd_server.url], tmp_path / "img", log=logs.append).run(tmp_path / "img.mp4")
    assert [line.split(" on ")[0] for line in logs] == ["step 0/1: chunks [0]"]
    assert len(list((tmp_path / "img" / "seg_00000").glob("*.png"))) == 25 + 18
    info = read_video_info(mp4)
    assert (info.frames, info.width, info.height) == (25 + 18, WIDTH, HEIGHT) and abs(info.fps - 12.0) < 1e-6

    (saved,) = continued["outputs"]["91"]["stream_states"]
    state = svd_server.output_dir / saved["subfolder"] / saved["filename"]
    _, job = tiny_svd_job(init_state=str(state), chunks=1, seed=4242)
    client_module.StreamRun(job, [svd_server.url], tmp_path / "state", log=logs.append).run(tmp_path / "state.mp4")
    assert np.array_equal(segment_frames(tmp_path / "state"), two_chunks[CONTINUE_FRAMES + 18:])
