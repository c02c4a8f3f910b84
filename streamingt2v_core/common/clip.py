"""OpenAI CLIP's image normalisation (per-channel mean and std of its training images, RGB in [0, 1]),
shared by every CLIP-family image encoder: StreamingT2V's APM (OpenCLIP ViT-H-14) and the CLIP score."""
from __future__ import annotations

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
