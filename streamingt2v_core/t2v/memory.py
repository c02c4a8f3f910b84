"""What StreamingT2V tells the memory planner (`common.memory`): which parts may leave the device between
uses, and how much a chunk needs."""
from __future__ import annotations

# Parts used once per prompt, per stream or per chunk, never inside a denoising step: in low-vram mode
# they visit the device only while they run. The two UNets (CAM `unet`, `base_model`) run every step.
OFFLOAD_PARTS = ("text_encoder", "image_encoder", "resampler", "vae")

GIB = 1024 ** 3


def chunk_need_bytes(config, height: int, width: int) -> int:
    """Activation memory for one guided chunk of `height` x `width` frames, scaled from 3 GiB for the
    official model at 256x256 (by pixels per chunk and the widest UNet level): above the peaks counted on
    the meta device (bench/README.md: a step 0.7 GiB with fused attention, 1.7 GiB with the math kernel;
    decoding 8 frames 0.75 GiB), so `auto` offloads on 8 GB cards, where the margin is thin."""
    pixels = height * width * config.chunk_frames
    widest = max(config.unet["block_out_channels"])
    return int(3 * GIB * pixels / (256 * 256 * 16) * widest / 1280)
