"""Video quality metrics of the StreamingT2V paper (Table 1), one module each: MAWE (mawe.py, with its optical
flow in flow.py), SCuts (scuts.py) and the CLIP text-image score (clip_score.py); the seam score at chunk
borders (seams.py) and the CIELAB colour drift (drift.py); frames and video files
(video.py); all of them over a video and its growing windows (report.py); the command line (cli.py,
`python -m streamingt2v_core.metrics VIDEO.mp4 [--prompt TEXT] [--json]`).

Imports only `common` from the core.
"""
from .cli import main
from .clip_score import DEFAULT_CLIP_ARCH, OpenCLIPScorer, clip_frame_scores
from .drift import DRIFT_STEP, DRIFT_WINDOW, ColorDrift, color_drift, drift_windows
from .mawe import (MAWE_COEFF, STAGNATION_MOTION, WORKING_SIZE, flow_pairs, forward_warp, mawe_from_pairs, pair_motion,
                   pair_warp_error, splat_sources)
from .report import WINDOW_START, WINDOW_STEP, VideoMetrics, compute_metrics, window_ends
from .scuts import scene_cuts
from .seams import (MIN_PERIOD, SeamScore, chunk_borders, detect_borders, frame_changes, seam_score,
                    seam_score_from_changes)
from .video import MIN_METRIC_FRAMES, check_frames, read_video, resize_frame, to_uint8_frames

__all__ = [
    "main", "DEFAULT_CLIP_ARCH", "OpenCLIPScorer", "clip_frame_scores", "MAWE_COEFF", "STAGNATION_MOTION",
    "WORKING_SIZE", "flow_pairs", "forward_warp", "mawe_from_pairs", "pair_motion", "pair_warp_error",
    "splat_sources", "WINDOW_START", "WINDOW_STEP", "VideoMetrics", "compute_metrics", "window_ends", "scene_cuts",
    "MIN_METRIC_FRAMES", "read_video", "resize_frame", "to_uint8_frames", "check_frames", "DRIFT_STEP",
    "DRIFT_WINDOW", "ColorDrift", "color_drift", "drift_windows", "MIN_PERIOD", "SeamScore", "chunk_borders",
    "detect_borders", "frame_changes", "seam_score", "seam_score_from_changes",
]
