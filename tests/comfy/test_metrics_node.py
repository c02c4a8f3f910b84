"""VideoQualityMetrics in a real headless ComfyUI: the numbers it outputs, the flow it names, the JSON and
the report, on a video with known motion, on frames the tiny stream made, and on a static video.

Each numeric output goes through core PreviewAny, so /history carries it as text."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.support.comfy_client import ComfyClient, describe_failure, status_str
from tests.support.graphs import stream_graph

SHIFT = 2  # pixels per frame the texture moves
SIZE = 128
FRAMES = 24
CUT_AT = 12  # frames 12.. show another texture
VIDEO = "st2v_metrics_translate.mp4"
OUTPUTS = ["report", "json", "mawe", "motion", "warp_error", "scuts", "clip_score"]


def textured(seed: int) -> np.ndarray:
    """A blocky random texture (4x4 blocks): enough gradient everywhere for optical flow."""
    cells = np.random.default_rng(seed).integers(0, 256, (SIZE // 4, SIZE // 4, 3), dtype=np.uint8)
    return np.kron(cells, np.ones((4, 4, 1), dtype=np.uint8))


def write_translating_video(path: Path) -> None:
    """Frame i is a texture rolled right by SHIFT*i pixels; from CUT_AT on, a different texture."""
    import av

    a, b = textured(1), textured(2)
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = SIZE, SIZE, "yuv444p"
        s.options = {"crf": "0"}  # lossless: the flow sees the shift we made
        for i in range(FRAMES):
            img = np.roll(a if i < CUT_AT else b, SHIFT * i, axis=1)
            for packet in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


@pytest.fixture(scope="module")
def translating_video(comfy_server) -> str:
    path = comfy_server.input_dir / VIDEO
    if not path.exists():
        write_translating_video(path)
    return VIDEO


def with_metrics(graph: dict, images: list, flow: str = "dis", working_size: int = SIZE) -> dict:
    g = dict(graph)
    g["90"] = {"class_type": "VideoQualityMetrics", "inputs": {
        "images": images, "flow": flow, "coeff": 9.5, "working_size": working_size, "window_start": 8,
        "window_step": 8}}
    for i, name in enumerate(OUTPUTS):
        g[f"9{i + 1}"] = {"class_type": "PreviewAny", "inputs": {"source": ["90", i]}}
    return g


def run_metrics(client: ComfyClient, graph: dict) -> dict:
    entry = client.run(graph, timeout=300)
    assert status_str(entry) == "success", describe_failure(entry)
    shown = {name: entry["outputs"][f"9{i + 1}"]["text"][0] for i, name in enumerate(OUTPUTS)}
    node_ui = entry["outputs"]["90"]["text"][0]  # the node's own text preview
    assert node_ui == shown["report"]
    data = json.loads(shown["json"])
    values = {"mawe": float(shown["mawe"]), "motion": float(shown["motion"]), "warp_error": float(shown["warp_error"]),
              "scuts": int(shown["scuts"]), "clip_score": float(shown["clip_score"])}
    # the socket outputs and the JSON tell the same story
    assert data["motion"] == pytest.approx(values["motion"], rel=1e-9)
    assert data["warp_error"] == pytest.approx(values["warp_error"], rel=1e-9)
    assert data["scuts"] == values["scuts"]
    if math.isfinite(values["mawe"]):
        assert data["mawe"] == pytest.approx(values["mawe"], rel=1e-9)
    else:
        assert data["mawe"] is None  # JSON has no inf
    assert math.isnan(values["clip_score"]) and data["clip_score"] is None  # no prompt, no CLIP model
    return {"report": shown["report"], "json": data, **values}


def load_video_graph(name: str) -> dict:
    return {"1": {"class_type": "LoadVideo", "inputs": {"file": name}},
            "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}}}


def test_known_motion_is_measured_and_the_flow_is_named(comfy, translating_video):
    out = run_metrics(comfy, with_metrics(load_video_graph(translating_video), ["2", 0]))
    data = out["json"]
    assert data["frames"] == FRAMES and data["size"] == SIZE and data["coeff"] == 9.5
    assert data["flow"] == "opencv-dis-medium"  # no RAFT weights configured: DIS, and it says so
    assert "opencv-dis-medium" in out["report"]
    # the texture moves SHIFT px per frame; the flow must see that (the cut pair adds a little)
    assert SHIFT * 0.85 < out["motion"] < SHIFT * 1.25, out["motion"]
    windows = {w["end"]: w for w in data["windows"]}
    assert sorted(windows) == [8, 16, 24]
    # frames 0..8: a pure translation, warped back almost exactly; the cut at 12 is what costs warp error
    assert windows[8]["motion"] == pytest.approx(SHIFT, rel=0.1)
    assert windows[8]["warp_error"] < 0.05 * windows[16]["warp_error"]
    assert 0 < out["mawe"] and math.isfinite(out["mawe"])
    # MAWE (mean of per-pair warp_error / (coeff * motion)): near 0 for the translation alone
    assert windows[8]["mawe"] < 0.05 * out["mawe"], (windows[8]["mawe"], out["mawe"])
    assert windows[16]["mawe"] > windows[8]["mawe"]


def test_frames_from_the_tiny_stream_give_numbers(comfy):
    graph = stream_graph(frames_to_add=8, steps=1, seed=77, prefix="video/st2v_metrics")
    out = run_metrics(comfy, with_metrics(graph, ["5", 0], flow="auto", working_size=64))
    assert out["json"]["frames"] == 24 and out["json"]["size"] == 64
    assert out["json"]["flow"] == "opencv-dis-medium"
    assert math.isfinite(out["motion"]) and out["motion"] > 0  # the new chunk moves against frame 15
    assert math.isfinite(out["warp_error"]) and out["warp_error"] > 0
    assert out["scuts"] >= 0
    assert f"frames: 24   flow: {out['json']['flow']}" in out["report"]


def test_a_static_video_is_reported_as_stagnant(comfy):
    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 12,
                                                       "color": 0x808080}}}
    out = run_metrics(comfy, with_metrics(graph, ["1", 0], working_size=64))
    assert out["motion"] == 0 and math.isinf(out["mawe"])
    assert out["json"]["stagnant"] is True and out["json"]["mawe"] is None
    assert "stagnation" in out["report"]


SEAM_OUTPUTS = OUTPUTS + ["seam_score", "max_delta_e"]


@pytest.mark.native_blend
def test_seam_score_and_colour_drift_outputs(comfy, translating_video):
    """The seam and drift inputs (added at the end) and outputs: a given border at the cut is a seam, and the
    socket outputs equal the JSON."""
    g = with_metrics(load_video_graph(translating_video), ["2", 0])
    g["90"]["inputs"].update(seam_chunk_length=CUT_AT, seam_overlap=0, seam_borders="", drift_window=8,
                             drift_step=8)
    for i in (7, 8):
        g[f"9{i + 1}"] = {"class_type": "PreviewAny", "inputs": {"source": ["90", i]}}
    entry = comfy.run(g, timeout=120)
    assert status_str(entry) == "success", describe_failure(entry)
    shown = {name: entry["outputs"][f"9{i + 1}"]["text"][0] for i, name in enumerate(SEAM_OUTPUTS)}
    data = json.loads(shown["json"])
    seam, drift = data["seam_score"], data["color_drift"]
    assert seam["source"] == f"given: chunk {CUT_AT} overlap 0" and seam["borders"] == [CUT_AT]
    assert float(shown["seam_score"]) == pytest.approx(seam["score"], rel=1e-9) and seam["score"] > 1.5
    assert [c["start"] for c in drift["curve"]] == [0, 8, 16] and drift["window"] == 8
    assert float(shown["max_delta_e"]) == pytest.approx(drift["max_delta_e"], rel=1e-9)
    assert drift["max_delta_e"] == max(c["delta_e"] for c in drift["curve"]) > 0  # another texture from frame 12
    assert "seam score:" in shown["report"] and "max ΔE" in shown["report"]
    assert data["mawe"] is not None and data["frames"] == FRAMES  # the old outputs still there
