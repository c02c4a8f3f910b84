"""StreamingSVD's fixed numbers, as the official code runs them (reference: official_streamingsvd.md)."""
from __future__ import annotations

import math

FRAMES = 25  # frames per chunk: SVD-XT's clip length
COND_FRAMES = 7  # the CAM's control frames: the last 7 frames of the previous chunk
NEW_FRAMES = FRAMES - COND_FRAMES  # 18 new frames per chunk (the first 7 repeat the control frames)
SVD_IMAGE_INDEX = 6  # the SVD image (anchor) of every chunk is frame 6 of the first chunk
FPS_ID = 6  # the official embeds fps_id 6 as it is ...
COMFY_FPS = FPS_ID + 1  # ... while ComfyUI embeds fps - 1, so ComfyUI needs fps 7 for the same vector
MOTION_BUCKET = 127
COND_AUG = 0.02  # level of the uniform augmentation noise on the [-1, 1] SVD image, also embedded
GUIDANCE_MIN = 1.5  # per-frame guidance scale: linspace(GUIDANCE_MIN, GUIDANCE_MAX, FRAMES)
GUIDANCE_MAX = 3.0
STEPS = 30  # Euler steps of the official sampler
VAE_DECODE_FRAMES = 8  # the temporal VAE decodes 8 frames per call (25 = 8 + 8 + 8 + 1)
LATENT_SCALE = 0.18215  # z / LATENT_SCALE before decoding
# Align-Your-Steps anchors for SVD (descending); the official interpolates them log-linearly to the step count.
AYS_SIGMAS = (700.0, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002)
CAM_CHANNELS = 320  # the CAM's frame encoder always outputs 320 channels (hard-coded officially)
# Real layout: CAM (`controlnet.*`) and merger tensors in model.safetensors (reference manifest).
CAM_KEYS = 657
MERGER_KEYS = 143
CAM_VALUES = 673_045_361
MERGER_VALUES = 68_867_200
MERGER_NAMES = tuple(range(12)) + ("mid",)  # one merger per skip connection, one for the middle block


def chunks_for(num_frames: int) -> int:
    """Autoregressive chunks after the first to reach `num_frames` (the official count; 100 frames -> 5)."""
    if num_frames <= FRAMES:
        return 0
    return math.ceil((num_frames - FRAMES) / NEW_FRAMES)


def frames_after(chunks: int) -> int:
    """Frames the first chunk plus `chunks` autoregressive chunks yield (before cutting to the request)."""
    return FRAMES + NEW_FRAMES * chunks
