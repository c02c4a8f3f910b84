"""The MS-Vid2Vid-XL refiner (official `Vid2VidSDUNet`, v-prediction) and its loader.

The UNet maps key for key onto diffusers' `UNet3DConditionModel` blocks (keys.py) but computes differently in
two layers (unet.py); its text encoder is the OpenCLIP ViT-H-14 text tower to its penultimate layer (text.py);
its autoencoder is the SD 2.1 `first_stage_model` (vae.py). Weights load from the official files safely
(files.py, through common.weights).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch

from ...blending.protocol import UNetEnhancer, X0Fn
from ...common.state_dict import check_dtypes, check_shapes, module_dtypes
from ...common.weights import CheckpointError
from ...common.weights import read_json  # JSON beside weights, read guarded
from .files import (CONFIG_FILES, CONVERTED_FILES, OFFICIAL_FILES, SHAPE_FIX, SOURCES_FIX, config_value,
                    find_file, read_weights)
from .keys import convert_official_unet, is_official_unet, official_to_diffusers_key
from .schedule import VPSchedule
from .solver import sdedit_solve
from .text import OpenCLIPTextEncoder
from .unet import build_unet, channel_keys, check_latent_size, infer_unet_config, meta_unet
from .vae import LATENT_SCALE, build_autoencoder


class MSVid2VidRefiner(UNetEnhancer):
    """MS-Vid2Vid-XL: v-prediction UNet on the logsnr_cosine_interp zero-terminal-SNR schedule, DPM++(2M) SDE."""

    family = "ms-vid2vid"
    latent_scale = LATENT_SCALE
    canvas = (720, 1280)  # official padded frame (H, W)

    def __init__(self, unet, text_encoder=None, vae=None, dtype=torch.float32):
        super().__init__()
        self.unet, self.text_encoder, self.vae = unet, text_encoder, vae
        self.schedule = VPSchedule()
        self.dtype = dtype

    def check_latent_size(self, h: int, w: int) -> None:
        check_latent_size(h, w)

    def first_timestep(self, steps: int, t_start: int) -> int:
        return int(t_start)  # the trailing plan starts exactly at t_start

    def alpha_sigma(self, t) -> tuple[float, float]:
        t = torch.as_tensor(t).reshape(-1)[:1]
        n = self.schedule.num_timesteps
        if t.numel() != 1 or not 0 <= int(t) < n:  # a negative index would wrap to the schedule's end
            raise ValueError(f"timestep {t.tolist()[0] if t.numel() else None} is outside the schedule's 0..{n - 1}")
        a, s = self.schedule.alpha_sigma(t)
        return float(a), float(s)

    def sample(self, noised: torch.Tensor, x0_fn: X0Fn, steps: int, t_start: int, seed: int = 0,
               brownian_noise=None) -> torch.Tensor:
        """DPM++(2M) SDE on the official trailing plan; the Brownian tree from entropy `seed` (0: the official
        tree) unless `brownian_noise` replays recorded increments."""
        return sdedit_solve(self.schedule, noised, x0_fn, steps, t_start, seed, brownian_noise)

    def meta_unet(self):
        return meta_unet(self.unet.config, self.dtype)

    @torch.no_grad()
    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """(context, negative_context), each (1, 77, 1024); the caption is `"<prompt>, "` as in the official pipeline."""
        if self.text_encoder is None:
            raise RuntimeError("this refiner was loaded without its text encoder (open_clip_pytorch_model.bin)")
        ids = OpenCLIPTextEncoder.tokenize([prompt + ", ", negative_prompt]).to(self.device)
        emb = self.text_encoder(ids).float()
        return emb[:1], emb[1:]


def load_ms_vid2vid(source, config=None, device="cpu", dtype=torch.float32) -> MSVid2VidRefiner:
    """Load MS-Vid2Vid-XL.

    source: the official folder (damo/Video-to-Video; `configuration.json` optional), a folder of converted
    files (unet/text_encoder/vae.safetensors), the UNet file alone (.pth or .safetensors, official or diffusers
    key names; then no text encoder/VAE), or a UNet state dict.
    config: dict or JSON path of the size config hook (files.CONFIG_FILES: only what shapes cannot tell);
    a folder's own config file is read when none is given.
    """
    if isinstance(config, (str, os.PathLike)):
        config = json.loads(Path(config).read_text())
    text_state = vae_state = None
    unet_where, text_where, vae_where = "refiner UNet state dict", "text encoder weights", "autoencoder weights"
    if isinstance(source, Mapping):
        unet_state = dict(source.get("state_dict", source))
    else:
        path = Path(source)
        if path.is_dir():
            config = config or next((c for name in CONFIG_FILES if (c := read_json(path / name))), None)
            unet_file = find_file(path, CONVERTED_FILES["unet"], OFFICIAL_FILES["unet"])
            if unet_file is None:
                raise CheckpointError(f"{path}: no {CONVERTED_FILES['unet']} or {OFFICIAL_FILES['unet']} here; "
                                   f"{SOURCES_FIX}")
            unet_state, unet_where = read_weights(unet_file), unet_file
            text_file = find_file(path, CONVERTED_FILES["text_encoder"], OFFICIAL_FILES["text_encoder"])
            vae_file = find_file(path, CONVERTED_FILES["autoencoder"], OFFICIAL_FILES["autoencoder"])
            text_where, vae_where = text_file, vae_file
            text_state = read_weights(text_file) if text_file else None
            vae_state = read_weights(vae_file) if vae_file else None
        else:
            unet_state, unet_where = read_weights(path), path
    unet_cfg = infer_unet_config(unet_state, config, where=unet_where)
    read_from = channel_keys(unet_state, unet_cfg)
    file_names = file_state = None  # diffusers key -> the file's own (official) key and tensor, for errors
    if is_official_unet(unet_state):
        file_state = unet_state
        unet_state = convert_official_unet(unet_state, unet_cfg["layers_per_block"], where=unet_where)
        file_names = {official_to_diffusers_key(k, unet_cfg["layers_per_block"]): k for k in file_state}
    unet = build_unet(unet_cfg, where=unet_where, read_from=read_from)
    # Keys first: a missing or renamed key the architecture is read from (transformer_in's, for the head size)
    # makes every dependent tensor look mis-shaped; the key list names that key itself.
    own = unet.state_dict()
    missing = [k for k in own if k not in unet_state]
    unexpected = [(file_names or {}).get(k, k) for k in unet_state if k not in own]
    if missing or unexpected:
        raise CheckpointError(f"{unet_where}: refiner UNet weights: {len(missing)} missing (e.g. {missing[:3]}), "
                           f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); {SOURCES_FIX}")
    check_shapes(unet, unet_state, unet_where, SHAPE_FIX, file_names, file_state)
    # load_state_dict copies an int8 or bool tensor into a float weight without a word: refuse it first
    check_dtypes(unet_state, module_dtypes(unet), unet_where, SOURCES_FIX, file_names)
    del file_state
    unet.load_state_dict(unet_state, strict=True)
    del unet_state
    text = None
    if text_state is not None:
        heads = config_value(config, "text_encoder", "open_clip_config", "text_cfg", "heads")
        text = OpenCLIPTextEncoder.from_state_dict(text_state, heads, where=text_where)
    vae = build_autoencoder(vae_state, where=vae_where) if vae_state is not None else None
    unet = unet.to(device) if dtype == torch.float32 else unet.to(device=device, dtype=dtype)
    model = MSVid2VidRefiner(unet, text, vae, dtype)
    pixel_hw = config_value(config, "video", "pixel_hw")
    if pixel_hw:  # the size config's canvas (the test-size model works on 80x128 instead of 720x1280)
        model.canvas = (int(pixel_hw[0]), int(pixel_hw[1]))
    if text is not None:
        text.to(device)  # fp32, as officially
    if vae is not None:
        vae.to(device)   # fp32 encode; decode may be cast by the caller
    return model
