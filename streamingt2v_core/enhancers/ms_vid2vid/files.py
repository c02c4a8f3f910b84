"""The MS-Vid2Vid-XL files: the official names, the converted ones, the size config, and reading them.

Reading goes through common.weights (safetensors, or torch.load(weights_only=True) with the restricted
unpickler for Lightning extras, memory-mapped); only the refiner's own fix is added here.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ...common import weights

OFFICIAL_FILES = {  # ModelScope damo/Video-to-Video v1.1.0 (configuration.json model_args)
    "unet": "non_ema_0035000.pth",
    "text_encoder": "open_clip_pytorch_model.bin",
    "autoencoder": "v2-1_512-ema-pruned.ckpt",
}
# Every weights source load_refiner takes, for the fix of a load error (the MS-Vid2Vid sources and the diffusers one).
SOURCES_FIX = ("give the MS-Vid2Vid-XL folder (damo/Video-to-Video: non_ema_0035000.pth, open_clip_pytorch_model.bin, "
               "v2-1_512-ema-pruned.ckpt), its UNet file alone, a converted folder (unet/text_encoder/vae.safetensors) "
               "or a diffusers text-to-video folder (model_index.json + unet/ + scheduler/)")
CONVERTED_FILES = {"unet": "unet.safetensors", "text_encoder": "text_encoder.safetensors",
                   "autoencoder": "vae.safetensors"}
# The size config hook: what shapes cannot tell about a model of another size (head sizes, canvas), in the
# format of the oracle's tiny_v2v_config.json (`unet.kwargs.head_dim`, `text_encoder.open_clip_config.text_cfg
# .heads`, `video.pixel_hw`). The test-size model (tools/make_tiny_refiner.py) ships it as tiny_v2v_config.json;
# any other model may put it beside its weights as refiner_config.json. Read in this order.
CONFIG_FILES = ("tiny_v2v_config.json", "refiner_config.json")
SHAPE_FIX = ("Fix: the key names are right but sizes differ, so the file is damaged or mixes tensors of two models "
             "(an interrupted download or conversion): download it again, or convert it again "
             "(python -m streamingt2v_core.refiner SRC DST); a model of another size needs its config beside it "
             "(tiny_v2v_config.json or refiner_config.json in the folder)")


def config_value(config, *path: str, default=None):
    """`config[path[0]][path[1]]...` of the size config, `default` where a level is missing or is no JSON
    object (a hand-edited file): the config only adds what shapes cannot tell, so a missing value is not an
    error."""
    value = config
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return default
        value = value[key]
    return value


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch.save file (.pth/.bin/.ckpt), unwrapping {'state_dict': ...}."""
    return weights.read_weights(path, SOURCES_FIX)


def find_file(folder: Path, *names: str) -> Path | None:
    """The first of `names` that is a file in `folder`."""
    return next((folder / n for n in names if (folder / n).is_file()), None)
