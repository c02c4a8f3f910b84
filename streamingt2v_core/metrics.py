"""Video quality metrics of the StreamingT2V paper (Table 1): MAWE, SCuts and CLIP text-image score.

MAWE follows the official `mawe.py` (reference/official_streamingt2v.md, section 6):
  * frames (uint8) are resized to 720x720, bilinear, no antialias, rounded back to uint8;
  * per consecutive pair (t, t+1): forward flow t -> t+1; motion = mean per-pixel flow magnitude;
    frame t is forward-splatted by the flow (target = round(source + flow), half to even as
    torch.round; on collisions the source that comes last in row-major order wins; targets that
    receive no source are unknown and excluded); warp error = squared error against frame t+1 in
    0..255 units, averaged over known pixel-channels (all of them if none is known);
  * MAWE = mean over pairs of warp_error / (coeff * motion), coeff = 9.5.
Departure, chosen so that stagnation never scores well: the official ratio is near 0 for a frozen
video (no warp error) although the paper means MAWE to punish stagnation. Here a video whose mean
motion is below `stagnation_motion` pixels (at 720x720 scale) has MAWE = inf and `stagnant` = True;
a pair with zero motion contributes inf (the official code would give inf or nan). The per-pair
numbers stay available unchanged. In JSON, inf is written as null, next to `stagnant` and
`frozen_pairs` that say why.

SCuts: PySceneDetect's AdaptiveDetector with default parameters, run through its SceneManager on the
frames at their own resolution (the manager's default auto-downscale applies), counting cuts.

CLIP score: mean over frames of 100 * cos(text embedding, image embedding). Any pair of encoders
serves (see `clip_frame_scores`); `OpenCLIPScorer` builds them from an OpenCLIP model file
(ViT-H-14 by default), never downloading.

Windows: each metric also over growing prefixes of the video (frames 0..120, 0..140, ...), as the
paper reports stability over time; they reuse the per-pair and per-frame values.

Command line: `python -m streamingt2v_core.metrics VIDEO.mp4 [--prompt TEXT] [--json]`; the video is
read with PyAV.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .flow import FLOW_METHODS, RAFT_WEIGHTS_ENV, get_flow, load_weights_file

WORKING_SIZE = 720
MAWE_COEFF = 9.5
STAGNATION_MOTION = 0.1  # mean flow magnitude in pixels at 720x720 below which a video is stagnant
MIN_FRAMES = 3
WINDOW_START = 120
WINDOW_STEP = 20
DEFAULT_CLIP_ARCH = "ViT-H-14"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------------------------------------------
# frames


def to_uint8_frames(frames, name: str = "frames") -> np.ndarray:
    """[T, H, W, 3] float in 0..1 (torch or numpy; ComfyUI IMAGE layout) or uint8 -> uint8 numpy.
    Floats are rounded to the nearest 8-bit level."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu()
        if frames.dtype == torch.bfloat16:
            frames = frames.float()
        frames = frames.numpy()
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"`{name}` must be a torch tensor or numpy array [T, H, W, 3], got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"`{name}` must have shape [T, H, W, 3] (frames, height, width, RGB), got {tuple(frames.shape)}")
    if frames.shape[0] < MIN_FRAMES:
        raise ValueError(f"`{name}` has {frames.shape[0]} frame(s); the metrics need at least {MIN_FRAMES} "
                         "(MAWE is a mean over consecutive pairs, SCuts compares a frame with its neighbours)")
    if frames.shape[1] < 2 or frames.shape[2] < 2:
        raise ValueError(f"`{name}` frames are {frames.shape[2]}x{frames.shape[1]} pixels; need at least 2x2")
    if frames.dtype == np.uint8:
        return np.ascontiguousarray(frames)
    if not np.issubdtype(frames.dtype, np.floating):
        raise TypeError(f"`{name}` must be float in 0..1 or uint8, got dtype {frames.dtype}")
    if not np.isfinite(frames).all():
        raise ValueError(f"`{name}` contains NaN or inf values")
    return np.clip(np.rint(frames.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3] as torchvision's F.resize(uint8, antialias=False) in
    mawe.py: bilinear (align_corners=False) in float, rounded back to uint8."""
    if frame.shape[0] == size and frame.shape[1] == size:
        return frame
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0).contiguous().numpy()


# ---------------------------------------------------------------------------------------------------
# MAWE


@functools.lru_cache(maxsize=4)
def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    return xs, ys


def splat_sources(flow: np.ndarray) -> np.ndarray:
    """For flow [H, W, 2] (dx, dy): the row-major source index that each target pixel receives in
    mawe.py's forward splat, -1 where none. The source at (x, y) lands on (round(x + dx), round(y + dy))
    (float32 sum, half to even as torch.round); targets outside the frame are dropped; on collisions
    the last write of NumPy's fancy assignment wins, i.e. the largest row-major source index."""
    h, w = flow.shape[:2]
    n = h * w
    xs, ys = _pixel_grid(h, w)
    tx = np.rint(xs + flow[..., 0].astype(np.float32, copy=False))
    ty = np.rint(ys + flow[..., 1].astype(np.float32, copy=False))
    inside = (tx >= 0) & (ty >= 0) & (tx < w) & (ty < h)
    target = np.where(inside, ty * np.float32(w) + tx, np.float32(n)).astype(np.int64).ravel()  # n: a dump slot
    # the same NumPy fancy assignment as mawe.py, in row-major source order: the last write wins
    winner = np.full(n + 1, -1, dtype=np.int64)
    winner[target] = np.arange(n, dtype=np.int64)
    return winner[:n].reshape(h, w)


def forward_warp(image: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward-splat `image` [C, H, W] by `flow` [2, H, W] (dx, dy) as mawe.py's warp_with_flow (see
    `splat_sources`). Returns the warped image (unknown targets 0) and the known-target mask [H, W]."""
    if image.ndim != 3 or flow.ndim != 3 or flow.shape[0] != 2 or image.shape[1:] != flow.shape[1:]:
        raise ValueError(f"forward_warp needs image [C, H, W] and flow [2, H, W] of the same size, got "
                         f"{tuple(image.shape)} and {tuple(flow.shape)}")
    c, h, w = image.shape
    winner = torch.from_numpy(splat_sources(flow.detach().cpu().permute(1, 2, 0).float().numpy())).reshape(-1)
    known = winner >= 0
    warped = torch.zeros((c, h * w), dtype=image.dtype)
    warped[:, known] = image.reshape(c, -1)[:, winner[known]]
    return warped.reshape(c, h, w), known.reshape(h, w)


def pair_motion(flow: np.ndarray) -> float:
    """Mean over pixels of the L2 norm of the flow [H, W, 2]."""
    return float(np.hypot(flow[..., 0], flow[..., 1]).mean(dtype=np.float64))


def pair_warp_error(left: np.ndarray, right: np.ndarray, flow: np.ndarray) -> float:
    """Warp error of mawe.py for uint8 frames [H, W, 3] and flow [H, W, 2], in 0..255 units: mean of
    (right - warped left)^2 over known pixel-channels (over all of them when none is known, which
    makes it 0). Integer arithmetic, so exact."""
    winner = splat_sources(flow).ravel()
    known = winner >= 0
    count = int(known.sum())
    if count == 0:
        return 0.0
    diff = right.reshape(-1, 3)[known].astype(np.int32) - left.reshape(-1, 3)[winner[known]].astype(np.int32)
    return float(np.einsum("ij,ij->", diff, diff, dtype=np.int64)) / (3 * count)


def mawe_from_pairs(warp_errors: Sequence[float], motions: Sequence[float], coeff: float = MAWE_COEFF,
                    stagnation_motion: float = STAGNATION_MOTION, size: int = WORKING_SIZE) -> dict:
    """Aggregate per-pair values into MAWE (mean of per-pair ratios, as mawe.py) with the
    stagnation rule described in the module docstring. `stagnation_motion` is in pixels at 720x720
    and scaled to the working `size`."""
    we = np.asarray(warp_errors, dtype=np.float64)
    mo = np.asarray(motions, dtype=np.float64)
    if we.size == 0 or we.shape != mo.shape:
        raise ValueError(f"mawe_from_pairs needs equally many warp errors and motions (>= 1), got "
                         f"{we.size} and {mo.size}")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = we / (coeff * mo)
    ratios[mo <= 0] = math.inf  # a frozen pair: no motion to normalise by
    mean_motion = float(mo.mean())
    stagnant = mean_motion < stagnation_motion * size / WORKING_SIZE
    return {"mawe": math.inf if stagnant else float(ratios.mean()),
            "motion": mean_motion,
            "warp_error": float(we.mean()),
            "stagnant": bool(stagnant),
            "frozen_pairs": int((mo <= 0).sum())}


def flow_pairs(frames_u8: np.ndarray, flow_fn, size: int = WORKING_SIZE,
               progress: Callable[[int, int], None] | None = None) -> tuple[list[float], list[float]]:
    """Per consecutive pair: (warp errors, motions) at the working size."""
    n = frames_u8.shape[0] - 1
    warp_errors, motions = [], []
    left = resize_frame(frames_u8[0], size)
    for i in range(n):
        right = resize_frame(frames_u8[i + 1], size)
        flow = np.asarray(flow_fn(left, right), dtype=np.float32)
        if flow.shape != (size, size, 2):
            raise RuntimeError(f"flow estimator returned shape {flow.shape}, expected {(size, size, 2)}")
        motions.append(pair_motion(flow))
        warp_errors.append(pair_warp_error(left, right, flow))
        left = right
        if progress is not None:
            progress(i + 1, n)
    return warp_errors, motions


# ---------------------------------------------------------------------------------------------------
# SCuts


def _array_stream(frames_u8: np.ndarray, fps: float):
    """A PySceneDetect VideoStream over in-memory RGB frames (fed as BGR, OpenCV's order)."""
    from scenedetect import FrameTimecode, VideoStream

    rate = Fraction(fps).limit_denominator(100000)
    count, height, width = frames_u8.shape[:3]

    class ArrayStream(VideoStream):
        BACKEND_NAME = "streamingt2v_array"

        def __init__(self):
            self._next = 0

        path = property(lambda self: "<frames>")
        name = property(lambda self: "frames")
        is_seekable = property(lambda self: True)
        frame_rate = property(lambda self: rate)
        duration = property(lambda self: FrameTimecode(count, fps=rate))
        frame_size = property(lambda self: (width, height))
        aspect_ratio = property(lambda self: 1.0)
        frame_number = property(lambda self: self._next)
        position = property(lambda self: FrameTimecode(max(self._next - 1, 0), fps=rate))
        position_ms = property(lambda self: self.position.seconds * 1000.0)

        def read(self, decode: bool = True):
            if self._next >= count:
                return False
            frame = frames_u8[self._next]
            self._next += 1
            return np.ascontiguousarray(frame[:, :, ::-1]) if decode else True

        def reset(self):
            self._next = 0

        def seek(self, target):
            self._next = int(FrameTimecode(target, fps=rate).frame_num)

    return ArrayStream()


def scene_cuts(frames_u8: np.ndarray, fps: float = 8.0) -> list[int]:
    """Frame indices where PySceneDetect's AdaptiveDetector (default parameters) starts a new scene.
    `fps` only matters for time-based parameters; the defaults are frame counts."""
    from scenedetect import AdaptiveDetector, SceneManager

    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    manager = SceneManager()
    manager.add_detector(AdaptiveDetector())
    manager.detect_scenes(video=_array_stream(frames_u8, fps))
    scenes = manager.get_scene_list(start_in_scene=True)
    return [int(start.frame_num) for start, _ in scenes[1:]]


# ---------------------------------------------------------------------------------------------------
# CLIP score


def clip_frame_scores(frames: torch.Tensor, prompt: str, encode_images: Callable[[torch.Tensor], torch.Tensor],
                      encode_text: Callable[[str], torch.Tensor], batch_size: int = 16) -> np.ndarray:
    """Per frame 100 * cos(text, image). `frames` [T, H, W, 3] float 0..1; `encode_images` maps a
    batch [N, H, W, 3] in 0..1 to embeddings [N, D] (it does its own resize/crop/normalise);
    `encode_text` maps the prompt to [D] or [1, D]."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("CLIP score needs a non-empty `prompt`")
    text = encode_text(prompt).float().reshape(-1)
    text = text / text.norm()
    scores = []
    for start in range(0, frames.shape[0], batch_size):
        emb = encode_images(frames[start:start + batch_size]).float().to(text.device)
        if emb.ndim != 2 or emb.shape[1] != text.shape[0]:
            raise ValueError(f"image embeddings {tuple(emb.shape)} do not match the text embedding "
                             f"size {text.shape[0]}: the two encoders must come from one CLIP model")
        emb = emb / emb.norm(dim=-1, keepdim=True)
        scores.append((100.0 * emb @ text).double().cpu())
    return torch.cat(scores).numpy()


def _clip_pixels(frames: torch.Tensor, image_size: int, mean, std) -> torch.Tensor:
    """OpenCLIP's eval preprocessing on tensors: shortest side to image_size (bicubic, antialias),
    center crop, normalise. [N, H, W, 3] 0..1 -> [N, 3, S, S]."""
    x = frames.permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    if min(h, w) != image_size:
        scale = image_size / min(h, w)
        nh, nw = max(image_size, round(h * scale)), max(image_size, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        h, w = nh, nw
    top, left = (h - image_size) // 2, (w - image_size) // 2
    x = x[:, :, top:top + image_size, left:left + image_size].clamp(0, 1)
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


class OpenCLIPScorer:
    """Image and text encoders of an OpenCLIP model for `clip_frame_scores`."""

    def __init__(self, model, tokenizer, name: str, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.tokenizer = tokenizer
        self.name = name
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        cfg = getattr(model.visual, "preprocess_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", OPENAI_CLIP_MEAN))
        self.std = tuple(cfg.get("std", OPENAI_CLIP_STD))

    @classmethod
    def from_file(cls, weights: str | os.PathLike, arch: str = DEFAULT_CLIP_ARCH,
                  device: str | torch.device = "cpu") -> "OpenCLIPScorer":
        """`arch` is an OpenCLIP model name (ViT-H-14) or a path to a model config JSON (registered
        under its file stem); `weights` a state dict file (.safetensors, or .bin/.pt/.pth read with
        weights_only=True)."""
        import open_clip

        if not os.path.isfile(weights):
            raise FileNotFoundError(f"CLIP weights file not found: {weights}. Give a local OpenCLIP "
                                    f"{DEFAULT_CLIP_ARCH} state dict (e.g. open_clip_pytorch_model.bin)")
        if arch.endswith(".json"):
            if not os.path.isfile(arch):
                raise FileNotFoundError(f"CLIP model config not found: {arch}")
            open_clip.add_model_config(arch)
            arch = os.path.splitext(os.path.basename(arch))[0]
        model = open_clip.create_model(arch, pretrained=None, device="cpu")
        state = load_weights_file(Path(weights))
        if state and all(k.startswith("module.") for k in state):
            state = {k[len("module."):]: v for k, v in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"CLIP weights {weights} do not fit OpenCLIP {arch}: missing "
                             f"{sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}")
        return cls(model, open_clip.get_tokenizer(arch), f"open_clip:{arch}", device)

    @torch.no_grad()
    def encode_images(self, frames: torch.Tensor) -> torch.Tensor:
        pixels = _clip_pixels(frames, self.image_size, self.mean, self.std).to(self.device)
        return self.model.encode_image(pixels)

    @torch.no_grad()
    def encode_text(self, prompt: str) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer([prompt]).to(self.device))[0]


# ---------------------------------------------------------------------------------------------------
# everything together


def _finite_or_none(x):
    if x is None:
        return None
    return float(x) if math.isfinite(x) else None


@dataclass
class VideoMetrics:
    frames: int
    size: int
    flow: str
    coeff: float
    mawe: float
    motion: float
    warp_error: float
    stagnant: bool
    frozen_pairs: int
    scuts: int
    cut_frames: list
    clip_score: float | None
    clip_model: str | None
    windows: list = field(default_factory=list)
    motion_per_pair: list = field(default_factory=list)
    warp_error_per_pair: list = field(default_factory=list)
    clip_per_frame: list | None = None

    def to_dict(self, per_pair: bool = False) -> dict:
        """JSON-safe: inf MAWE becomes null (see `stagnant` / `frozen_pairs`)."""
        d = {"frames": self.frames, "mawe": _finite_or_none(self.mawe), "motion": self.motion,
             "warp_error": self.warp_error, "stagnant": self.stagnant, "frozen_pairs": self.frozen_pairs,
             "scuts": self.scuts, "cut_frames": list(self.cut_frames),
             "clip_score": _finite_or_none(self.clip_score), "clip_model": self.clip_model,
             "flow": self.flow, "size": self.size, "coeff": self.coeff,
             "windows": [dict(w, mawe=_finite_or_none(w["mawe"]), clip_score=_finite_or_none(w["clip_score"]))
                         for w in self.windows]}
        if per_pair:
            d["motion_per_pair"] = list(self.motion_per_pair)
            d["warp_error_per_pair"] = list(self.warp_error_per_pair)
            d["clip_per_frame"] = None if self.clip_per_frame is None else list(self.clip_per_frame)
        return d

    def report(self) -> str:
        def mawe_text(m, stagnant, frozen):
            if math.isfinite(m):
                return f"{m:.2f}"
            return "inf (stagnation: " + ("no motion" if stagnant else f"{frozen} frozen pair(s)") + ")"

        clip = "n/a (no prompt or CLIP model)" if self.clip_score is None else f"{self.clip_score:.2f}"
        lines = [f"frames: {self.frames}   flow: {self.flow} at {self.size}x{self.size}   coeff: {self.coeff}",
                 f"MAWE: {mawe_text(self.mawe, self.stagnant, self.frozen_pairs)}   (lower is better)",
                 f"motion: {self.motion:.3f} px   warp error: {self.warp_error:.2f}",
                 f"SCuts: {self.scuts}" + (f" at frames {self.cut_frames}" if self.cut_frames else ""),
                 f"CLIP score: {clip}" + (f" ({self.clip_model})" if self.clip_model else "")]
        if self.windows:
            lines.append("windows:  frames   MAWE    SCuts   CLIP")
            for w in self.windows:
                c = "-" if w["clip_score"] is None else f"{w['clip_score']:.2f}"
                lines.append(f"          0..{w['end']:<5d} {mawe_text(w['mawe'], w['stagnant'], w['frozen_pairs']):>7s}"
                             f"  {w['scuts']:5d}   {c}")
        return "\n".join(lines)


def window_ends(frames: int, start: int = WINDOW_START, step: int = WINDOW_STEP) -> list[int]:
    """Ends (exclusive) of the growing windows 0..start, 0..start+step, ..., the last one at `frames`;
    none when the video is not longer than `start`."""
    if start < MIN_FRAMES or step < 1:
        raise ValueError(f"windows need start >= {MIN_FRAMES} and step >= 1, got start={start}, step={step}")
    if frames <= start:
        return []
    ends = list(range(start, frames + 1, step))
    if ends[-1] != frames:
        ends.append(frames)
    return ends


def compute_metrics(frames, prompt: str | None = None, clip=None, flow=None, *, flow_method: str = "auto",
                    raft_weights: str | None = None, size: int = WORKING_SIZE, coeff: float = MAWE_COEFF,
                    stagnation_motion: float = STAGNATION_MOTION, fps: float = 8.0,
                    window_start: int = WINDOW_START, window_step: int = WINDOW_STEP,
                    progress: Callable[[int, int], None] | None = None) -> VideoMetrics:
    """All metrics of one video. `frames` [T, H, W, 3] float 0..1 or uint8. `clip`: an object with
    `encode_images`, `encode_text` and `name` (e.g. OpenCLIPScorer); the CLIP score is computed only
    with both `prompt` and `clip`. `flow`: an estimator (see flow.py), else chosen by `flow_method`
    and `raft_weights`. `progress(done, total)` is called after each frame pair."""
    u8 = to_uint8_frames(frames)
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"working size must be an int >= 8 (the official value is {WORKING_SIZE}), got {size!r}")
    if not coeff > 0:
        raise ValueError(f"coeff must be positive (official 9.5), got {coeff}")
    if prompt is not None and not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    want_clip = bool(prompt and prompt.strip()) and clip is not None
    ends = window_ends(u8.shape[0], window_start, window_step)
    if flow is None:
        flow = get_flow(flow_method, raft_weights)

    clip_scores = None
    if want_clip:  # first: mismatched encoders fail at the first batch, before the flow work
        clip_scores = clip_frame_scores(torch.from_numpy(u8).float() / 255.0, prompt, clip.encode_images,
                                        clip.encode_text)
    warp_errors, motions = flow_pairs(u8, flow, size, progress)
    cuts = scene_cuts(u8, fps)

    def summary(end: int) -> dict:
        m = mawe_from_pairs(warp_errors[:end - 1], motions[:end - 1], coeff, stagnation_motion, size)
        m["scuts"] = sum(1 for c in cuts if c < end)
        m["clip_score"] = None if clip_scores is None else float(clip_scores[:end].mean())
        return m

    whole = summary(u8.shape[0])
    windows = [dict(end=e, **summary(e)) for e in ends]
    return VideoMetrics(frames=int(u8.shape[0]), size=size, flow=flow.name, coeff=float(coeff),
                        mawe=whole["mawe"], motion=whole["motion"], warp_error=whole["warp_error"],
                        stagnant=whole["stagnant"], frozen_pairs=whole["frozen_pairs"], scuts=len(cuts),
                        cut_frames=cuts, clip_score=whole["clip_score"],
                        clip_model=getattr(clip, "name", None) if want_clip else None, windows=windows,
                        motion_per_pair=motions, warp_error_per_pair=warp_errors,
                        clip_per_frame=None if clip_scores is None else clip_scores.tolist())


# ---------------------------------------------------------------------------------------------------
# command line


def read_video(path: str) -> tuple[np.ndarray, float]:
    """All frames of a video file as uint8 RGB [T, H, W, 3] and its frame rate, with PyAV."""
    import av

    if not os.path.isfile(path):
        raise FileNotFoundError(f"video file not found: {path}")
    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.base_rate or 8
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise ValueError(f"{path} has no decodable frames")
    return np.stack(frames), float(rate)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streamingt2v_core.metrics",
                                description="MAWE, SCuts and CLIP score of a video (StreamingT2V, Table 1).")
    p.add_argument("video", help="video file (read with PyAV)")
    p.add_argument("--prompt", default=None, help="text for the CLIP score")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--per-pair", action="store_true", help="with --json: also per-pair and per-frame values")
    p.add_argument("--clip-model", default=None, help="OpenCLIP weights file (state dict) for the CLIP score")
    p.add_argument("--clip-arch", default=DEFAULT_CLIP_ARCH,
                   help=f"OpenCLIP model name or config JSON path (default {DEFAULT_CLIP_ARCH})")
    p.add_argument("--flow", default="auto", choices=FLOW_METHODS,
                   help="optical flow: auto = RAFT-large if weights are given, else OpenCV DIS; farneback is "
                        "weaker (zero flow on smooth, low-gradient frames)")
    p.add_argument("--raft-weights", default=None,
                   help=f"torchvision raft_large state dict (or set {RAFT_WEIGHTS_ENV}); never downloaded")
    p.add_argument("--size", type=int, default=WORKING_SIZE, help="working size for the flow (official 720)")
    p.add_argument("--coeff", type=float, default=MAWE_COEFF, help="MAWE coefficient (official 9.5)")
    p.add_argument("--window-start", type=int, default=WINDOW_START)
    p.add_argument("--window-step", type=int, default=WINDOW_STEP)
    p.add_argument("--device", default="cpu", help="torch device for RAFT and CLIP")
    args = p.parse_args(argv)

    flow = get_flow(args.flow, args.raft_weights, args.device)  # fail on bad weights before decoding
    clip = OpenCLIPScorer.from_file(args.clip_model, args.clip_arch, args.device) if args.clip_model else None
    frames, fps = read_video(args.video)
    result = compute_metrics(frames, prompt=args.prompt, clip=clip, flow=flow, size=args.size, coeff=args.coeff,
                             fps=fps, window_start=args.window_start, window_step=args.window_step)
    if args.json:
        print(json.dumps(result.to_dict(per_pair=args.per_pair), allow_nan=False))
    else:
        print(result.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
