"""MAWE / SCuts / CLIP score (streamingt2v_core.metrics) on synthetic videos with known answers."""
from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from streamingt2v_core import metrics as M
from streamingt2v_core.flow import RAFT_WEIGHTS_ENV, get_flow

ROOT = Path(__file__).resolve().parents[2]
TINY_CLIP_CONFIG = ROOT / "tests" / "data" / "metrics" / "open_clip_tiny_metrics.json"


# ---------------------------------------------------------------------------------------------- videos


def noise_texture(seed: int, h: int = 240, w: int = 480) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def smooth_texture(seed: int, h: int = 240, w: int = 480) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, 10, 20, generator=g)
    return F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)[0].permute(1, 2, 0).numpy()


def panning(texture: np.ndarray, frames: int, shift: int, size: int, start: int = 0) -> np.ndarray:
    """A camera panning right over `texture`: content moves left by `shift` pixels per frame."""
    return np.stack([texture[10:10 + size, 10 + shift * (start + t):10 + shift * (start + t) + size]
                     for t in range(frames)])


# ---------------------------------------------------------------------------------------------- warp


def test_forward_warp_hand_example_collisions_last_write_wins():
    # 1 channel, 2x3; values are not ordered like the source indices, so "max value" or "first write"
    # implementations give other answers.
    image = torch.tensor([[[9.0, 2.0, 3.0], [1.0, 5.0, 6.0]]])
    dx = torch.tensor([[1.0, 0.0, 0.5], [1.0, 0.6, 1.0]])
    dy = torch.tensor([[0.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    # (0,0)->(0,1); (0,1)->(0,1); (1,0)->(0,1): three-way collision, source (1,0) is last -> 1.
    # (0,2): x = round(2.5) = 2 (half to even, as torch.round) -> stays, value 3.
    # (1,1): x = round(1.6) = 2 -> (1,2), value 5.  (1,2): x = 3 is outside -> dropped.
    warped, known = M.forward_warp(image, torch.stack([dx, dy]))
    assert known.tolist() == [[False, True, True], [False, False, True]]
    assert warped.tolist() == [[[0.0, 1.0, 3.0], [0.0, 0.0, 5.0]]]


def test_pair_warp_error_hand_example_and_no_known_fallback():
    left = np.repeat(np.array([[9, 2, 3], [1, 5, 6]], dtype=np.uint8)[..., None], 3, axis=2)
    right = np.full((2, 3, 3), 2, dtype=np.uint8)
    flow = np.zeros((2, 3, 2), dtype=np.float32)
    flow[..., 0] = [[1.0, 0.0, 0.5], [1.0, 0.6, 1.0]]
    flow[..., 1] = [[0.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]
    # known targets hold 1, 3, 5 against 2: (1 + 1 + 9) per channel, 3 channels, over 9 pixel-channels
    assert M.pair_warp_error(left, right, flow) == pytest.approx(33.0 / 9.0, abs=1e-12)
    # everything leaves the frame: nothing known, the official code divides by all elements -> 0
    assert M.pair_warp_error(left, right, np.full((2, 3, 2), 10.0, dtype=np.float32)) == 0.0


def test_forward_warp_matches_a_pixel_loop_of_the_official_algorithm():
    rng = np.random.default_rng(3)
    h, w = 9, 11
    image = rng.random((3, h, w))
    flow = rng.normal(0.0, 2.5, (2, h, w)).astype(np.float32)
    flow[:, 2, 3] = [0.5, -1.5]  # exact halves: half to even
    expected = np.zeros_like(image)
    known = np.zeros((h, w), dtype=bool)
    for y in range(h):  # row-major: later sources overwrite earlier ones
        for x in range(w):
            tx = int(torch.round(torch.tensor(np.float32(x) + flow[0, y, x])))
            ty = int(torch.round(torch.tensor(np.float32(y) + flow[1, y, x])))
            if 0 <= tx < w and 0 <= ty < h:
                expected[:, ty, tx] = image[:, y, x]
                known[ty, tx] = True
    warped, got_known = M.forward_warp(torch.from_numpy(image), torch.from_numpy(flow))
    assert np.array_equal(got_known.numpy(), known)
    assert np.array_equal(warped.numpy(), expected)
    assert 0 < known.sum() < h * w  # the case has both collisions/holes and hits


def test_resize_equals_torchvision_uint8_resize_without_antialias():
    import torchvision.transforms.functional as TF

    frame = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    ours = M.resize_frame(frame, 72)
    theirs = TF.resize(torch.from_numpy(frame).permute(2, 0, 1), [72, 72], antialias=False)
    assert np.array_equal(ours, theirs.permute(1, 2, 0).numpy())


# ---------------------------------------------------------------------------------------------- MAWE


def test_mawe_is_the_mean_of_per_pair_ratios():
    r = M.mawe_from_pairs([9.5, 0.0], [1.0, 10.0], coeff=9.5, size=720)
    assert r["mawe"] == pytest.approx(0.5)  # ratios 1 and 0; a ratio of means would be 0.18
    assert r["motion"] == pytest.approx(5.5) and r["warp_error"] == pytest.approx(4.75)
    assert not r["stagnant"] and r["frozen_pairs"] == 0


def test_static_video_reports_stagnation_not_a_small_number():
    frames = np.repeat(noise_texture(0)[None, :64, :64], 6, axis=0)
    r = M.compute_metrics(frames, size=64)
    assert r.motion == 0.0 and r.warp_error == 0.0
    assert r.mawe == math.inf and r.stagnant and r.frozen_pairs == 5
    d = r.to_dict()
    assert d["mawe"] is None and d["stagnant"] is True
    assert "stagnation" in r.report()


def test_nearly_static_video_is_stagnant_by_the_motion_threshold():
    # tiny motion with a warp error would give a *small* official ratio; the threshold flags it
    r = M.mawe_from_pairs([0.5, 0.5], [0.05, 0.04], size=720)
    assert r["stagnant"] and r["mawe"] == math.inf
    r = M.mawe_from_pairs([0.5, 0.5], [0.05, 0.04], stagnation_motion=0.01, size=720)
    assert not r["stagnant"] and r["mawe"] == pytest.approx(np.mean([0.5 / (9.5 * 0.05), 0.5 / (9.5 * 0.04)]))


def test_translation_at_720_gives_the_shift_as_motion_and_a_small_warp_error():
    # 144 px frames panning 2 px per frame = exactly 10 px per frame at 720x720
    frames = panning(noise_texture(1), frames=3, shift=2, size=144)
    r = M.compute_metrics(frames)
    assert r.size == 720 and r.flow == "opencv-dis-medium"
    assert all(abs(m - 10.0) < 1.0 for m in r.motion_per_pair)
    # the same frames compared without motion compensation differ by thousands
    u8 = [M.resize_frame(f, 720) for f in M.to_uint8_frames(frames)]
    unwarped = M.pair_warp_error(u8[0], u8[1], np.zeros((720, 720, 2), np.float32))
    assert unwarped > 1000
    assert all(we < 10.0 for we in r.warp_error_per_pair)
    assert 0 < r.mawe < 0.2 and not r.stagnant


def test_a_duplicated_frame_in_a_moving_video_is_a_frozen_pair():
    frames = panning(noise_texture(2), frames=5, shift=3, size=48)
    frames = np.concatenate([frames[:2], frames[1:]])
    r = M.compute_metrics(frames, size=96)
    assert r.frozen_pairs == 1 and not r.stagnant and r.mawe == math.inf
    assert r.motion_per_pair[1] == 0.0 and r.motion_per_pair[0] > 3.0


# ---------------------------------------------------------------------------------------------- SCuts


def test_scuts_one_hard_cut_and_none_without():
    a = panning(smooth_texture(1), frames=40, shift=1, size=64)
    b = panning(smooth_texture(2), frames=40, shift=1, size=64)
    with_cut = np.concatenate([a[:20], b[20:]])
    assert M.scene_cuts(M.to_uint8_frames(with_cut)) == [20]
    assert M.scene_cuts(M.to_uint8_frames(a)) == []


def test_windows_over_time():
    assert M.window_ends(240) == list(range(120, 241, 20))
    assert M.window_ends(250)[-2:] == [240, 250]
    assert M.window_ends(120) == []
    a = panning(smooth_texture(3), frames=40, shift=1, size=32)
    b = panning(smooth_texture(4), frames=40, shift=1, size=32)
    r = M.compute_metrics(np.concatenate([a[:20], b[20:]]), size=32, window_start=10, window_step=10)
    assert [w["end"] for w in r.windows] == [10, 20, 30, 40]
    assert [w["scuts"] for w in r.windows] == [0, 0, 1, 1] and r.scuts == 1 and r.cut_frames == [20]
    first = M.mawe_from_pairs(r.warp_error_per_pair[:9], r.motion_per_pair[:9], size=32)
    assert r.windows[0]["mawe"] == pytest.approx(first["mawe"])
    assert r.windows[-1]["mawe"] == pytest.approx(r.mawe)


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("frames", [np.zeros((0, 8, 8, 3), np.float32), np.zeros((2, 8, 8, 3), np.float32)])
def test_too_short_videos_give_a_clear_error(frames):
    with pytest.raises(ValueError, match="at least 3"):
        M.compute_metrics(frames, size=16)


def test_bad_layout_and_values_give_a_clear_error():
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        M.compute_metrics(np.zeros((5, 3, 8, 8), np.float32), size=16)
    with pytest.raises(ValueError, match="NaN"):
        M.compute_metrics(np.full((5, 8, 8, 3), np.nan, np.float32), size=16)
    with pytest.raises(ValueError, match="flow method"):
        get_flow("sparse")
    with pytest.raises(ValueError, match=RAFT_WEIGHTS_ENV):
        get_flow("raft")


def test_farneback_flow_finds_a_translation():
    frames = panning(noise_texture(5), frames=3, shift=2, size=48)  # 4 px per frame at 96x96
    r = M.compute_metrics(frames, flow=get_flow("farneback"), size=96)
    assert r.flow == "opencv-farneback" and all(abs(m - 4.0) < 0.4 for m in r.motion_per_pair)


# ---------------------------------------------------------------------------------------------- RAFT


def test_raft_is_used_when_its_weights_file_is_given(tmp_path, monkeypatch):
    from safetensors.torch import save_file
    from torchvision.models.optical_flow import raft_large

    torch.manual_seed(0)
    weights = tmp_path / "raft_large.safetensors"
    save_file({k: v.contiguous() for k, v in raft_large(weights=None).state_dict().items()}, str(weights))
    monkeypatch.setenv(RAFT_WEIGHTS_ENV, str(weights))
    flow = get_flow("auto")
    assert flow.name == "raft-large"
    frames = M.to_uint8_frames(panning(noise_texture(4), frames=3, shift=1, size=64))
    r = M.compute_metrics(frames, flow=flow, size=128)
    assert r.flow == "raft-large" and len(r.motion_per_pair) == 2 and math.isfinite(r.motion)
    monkeypatch.delenv(RAFT_WEIGHTS_ENV)
    assert get_flow("auto").name == "opencv-dis-medium"
    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad))
    with pytest.raises(ValueError, match="raft_large"):
        get_flow("raft", bad)
    with pytest.raises(FileNotFoundError):
        get_flow("auto", tmp_path / "missing.pth")


# ---------------------------------------------------------------------------------------------- CLIP


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip
    from safetensors.torch import save_file

    open_clip.add_model_config(str(TINY_CLIP_CONFIG))
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP_CONFIG.stem, pretrained=None)
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_clip_score_matches_open_clip_own_preprocessing(tiny_clip):
    import open_clip
    from PIL import Image

    scorer = M.OpenCLIPScorer.from_file(tiny_clip, str(TINY_CLIP_CONFIG))
    frames = M.to_uint8_frames(panning(smooth_texture(5), frames=4, shift=2, size=64))
    prompt = "a red balloon over a green field"
    got = M.clip_frame_scores(torch.from_numpy(frames).float() / 255, prompt, scorer.encode_images,
                              scorer.encode_text, batch_size=3)
    preprocess = open_clip.image_transform(64, is_train=False)
    with torch.no_grad():
        img = scorer.model.encode_image(torch.stack([preprocess(Image.fromarray(f)) for f in frames]))
        txt = scorer.model.encode_text(open_clip.get_tokenizer(TINY_CLIP_CONFIG.stem)([prompt]))
    expected = 100 * F.cosine_similarity(img, txt, dim=-1).double().numpy()
    assert np.allclose(got, expected, atol=1e-4)
    assert np.ptp(got) > 0  # frames differ, so do their scores
    r = M.compute_metrics(frames, prompt=prompt, clip=scorer, size=32)
    assert r.clip_score == pytest.approx(float(expected.mean()), abs=1e-4)
    assert r.clip_model == "open_clip:open_clip_tiny_metrics"
    assert M.compute_metrics(frames, clip=scorer, size=32).clip_score is None


# ---------------------------------------------------------------------------------------------- CLI


def write_mp4(path: Path, frames_u8: np.ndarray, fps: int = 8) -> None:
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames_u8.shape[2], frames_u8.shape[1], "yuv420p"
        stream.options = {"crf": "10"}
        for f in frames_u8:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_cli_json_on_a_small_mp4(tmp_path, capsys, tiny_clip):
    frames = M.to_uint8_frames(panning(smooth_texture(6), frames=12, shift=2, size=64))
    video = tmp_path / "pan.mp4"
    write_mp4(video, frames)
    assert M.main([str(video), "--json", "--size", "64"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("frames", "mawe", "motion", "warp_error", "scuts", "clip_score", "flow"):
        assert key in out
    assert out["frames"] == 12 and out["flow"] == "opencv-dis-medium" and out["clip_score"] is None
    assert out["scuts"] == 0 and 1.5 < out["motion"] < 2.5 and out["mawe"] > 0
    assert M.main([str(video), "--json", "--size", "64", "--prompt", "a pan", "--clip-model", str(tiny_clip),
                   "--clip-arch", str(TINY_CLIP_CONFIG)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out["clip_score"], float) and out["clip_model"] == "open_clip:open_clip_tiny_metrics"
    assert M.main([str(video), "--size", "64"]) == 0
    assert "MAWE" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError):
        M.main([str(tmp_path / "missing.mp4")])


def test_scuts_on_a_file_equal_pyscenedetect_reading_the_file_itself(tmp_path, capsys):
    from scenedetect import AdaptiveDetector, detect

    a = panning(smooth_texture(8), frames=40, shift=1, size=64)
    b = panning(smooth_texture(9), frames=40, shift=1, size=64)
    video = tmp_path / "cut.mp4"
    write_mp4(video, M.to_uint8_frames(np.concatenate([a[:20], b[20:]])))
    own = [int(s[0].frame_num) for s in detect(str(video), AdaptiveDetector(), start_in_scene=True)[1:]]
    assert M.main([str(video), "--json", "--size", "32"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert own == [20] and out["cut_frames"] == own and out["scuts"] == 1


# ---------------------------------------------------------------------------------------------- node


@pytest.fixture(scope="module")
def metrics_node():
    """nodes/metrics.py imported as part of a bare stand-in package (the pack's own __init__ needs a
    running ComfyUI's folder setup; the node's relative import of the core needs a parent package)."""
    comfy_root = ROOT / ".comfyui"
    if not (comfy_root / "comfy_api").is_dir():
        pytest.skip("ComfyUI is not installed at .comfyui (tools/bootstrap.sh)")
    sys.path.insert(0, str(comfy_root))
    import comfy.cli_args

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True  # what `main.py --cpu` sets; model_management reads it on import
    pack = types.ModuleType("st2v_metrics_pack")
    pack.__path__ = [str(ROOT)]
    sub = types.ModuleType("st2v_metrics_pack.nodes")
    sub.__path__ = [str(ROOT / "nodes")]
    sys.modules.setdefault("st2v_metrics_pack", pack)
    sys.modules.setdefault("st2v_metrics_pack.nodes", sub)
    import importlib

    return importlib.import_module("st2v_metrics_pack.nodes.metrics")


class FakeClipVision:
    """Stands in for ComfyUI's CLIP_VISION: embedding = (mean RGB, 1 - mean RGB), cut to `dim`."""

    def __init__(self, dim: int = 6):
        self.dim = dim

    def encode_image(self, image):
        m = image.mean(dim=(1, 2))
        return {"image_embeds": torch.cat([m, 1 - m], dim=1)[:, :self.dim]}


class FakeClip:
    def tokenize(self, text):
        return {"l": [[(1, 1.0)]], "text": text}

    def encode_from_tokens(self, tokens, return_pooled=False):
        return torch.zeros(1, 77, 6), torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])


def test_node_schema_and_execute(metrics_node):
    node = metrics_node.VideoQualityMetrics
    assert metrics_node.METRICS_NODES == [node]
    schema = node.define_schema()
    assert schema.category == "StreamingT2V/metrics" and schema.node_id == "VideoQualityMetrics"
    frames = torch.from_numpy(panning(smooth_texture(7), frames=6, shift=1, size=32))
    out = node.execute(frames, "dis", 9.5, 32, 120, 20)
    report, js, mawe, motion, warp_error, scuts, clip_score = out.result
    assert json.loads(js)["frames"] == 6 and "MAWE" in report and scuts == 0
    assert math.isfinite(mawe) and motion > 0.5 and math.isnan(clip_score)
    static = frames[:1].repeat(4, 1, 1, 1)
    assert node.execute(static, "dis", 9.5, 32, 120, 20).result[2] == math.inf
    with pytest.raises(ValueError, match="clip_vision"):
        node.execute(frames, "dis", 9.5, 32, 120, 20, prompt="a pan", clip=FakeClip())
    result = node.execute(frames, "dis", 9.5, 32, 120, 20, prompt="a pan", clip=FakeClip(),
                          clip_vision=FakeClipVision()).result
    m = torch.from_numpy(M.to_uint8_frames(frames.numpy())).double().mean(dim=(1, 2)) / 255
    emb = torch.cat([m, 1 - m], dim=1)
    expected = float((100 * emb[:, 0] / emb.norm(dim=1)).mean())  # text embedding is the first axis
    assert result[6] == pytest.approx(expected, abs=1e-4)
    assert json.loads(result[1])["clip_model"] == "comfy:CLIP_VISION+CLIP"
    with pytest.raises(ValueError, match="one CLIP model"):  # 4-d images against a 6-d text embedding
        node.execute(frames, "dis", 9.5, 32, 120, 20, prompt="a pan", clip=FakeClip(),
                     clip_vision=FakeClipVision(dim=4))
