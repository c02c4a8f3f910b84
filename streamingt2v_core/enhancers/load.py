"""The one load dispatch of the enhancers: which family a weights source belongs to."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from ..common.weights import CheckpointError
from .diffusers_t2v import is_diffusers_folder, load_diffusers_refiner
from .i2vgen.model import is_i2vgen_folder, load_i2vgen
from .ms_vid2vid.files import SOURCES_FIX
from .ms_vid2vid.model import load_ms_vid2vid

RefinerLoadError = CheckpointError  # the older name of the pack's one load error


def load_refiner(source, config=None, device="cpu", dtype=torch.float32):
    """Load a refiner.

    source: the official MS-Vid2Vid-XL folder (damo/Video-to-Video; `configuration.json` optional), a folder of
    converted files (unet/text_encoder/vae.safetensors), the UNet file alone (.pth or .safetensors, official or
    diffusers key names; then no text encoder/VAE), a UNet state dict, or a diffusers text-to-video folder
    (model_index.json, unet/, scheduler/, text_encoder/, tokenizer/, vae/), which gives the second family, or a
    diffusers I2VGen-XL folder (model_index.json naming I2VGenXLPipeline, or unet/ an I2VGenXLUNet): the third.
    config: dict or JSON path of MS-Vid2Vid's size config (tiny_v2v_config.json format: only what shapes
    cannot tell; ms_vid2vid.files.CONFIG_FILES).
    """
    if not isinstance(source, Mapping) and Path(source).is_dir() and is_i2vgen_folder(Path(source)):
        return load_i2vgen(source, device=device, dtype=dtype)
    if not isinstance(source, Mapping) and Path(source).is_dir() and is_diffusers_folder(Path(source)):
        return load_diffusers_refiner(source, device=device, dtype=dtype, fix=SOURCES_FIX)
    return load_ms_vid2vid(source, config, device, dtype)
