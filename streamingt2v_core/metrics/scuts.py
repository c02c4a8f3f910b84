"""SCuts, the number of scene cuts (StreamingT2V paper, Table 1): PySceneDetect's AdaptiveDetector with
default parameters, run through its SceneManager on the frames at their own resolution (the manager's
default auto-downscale applies)."""
from __future__ import annotations

from fractions import Fraction

import numpy as np


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
