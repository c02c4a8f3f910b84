"""The MS-Vid2Vid-XL autoencoder: the SD 2.1 `first_stage_model` (reference/official_refiner.md §4, LDM
names) mapped onto diffusers' AutoencoderKL."""
from __future__ import annotations

import re
from typing import Mapping

import torch

from ...common.state_dict import check_shapes
from ...common.weights import CheckpointError
from .files import SHAPE_FIX, SOURCES_FIX

# SD 2.1 autoencoder scale, used by the official refiner: a fact of this model (the StreamingT2V config
# states its own ModelScope autoencoder's, which happens to be the same SD number).
LATENT_SCALE = 0.18215


def build_autoencoder(state: Mapping[str, torch.Tensor], where="autoencoder weights"):
    """diffusers AutoencoderKL from an LDM `first_stage_model.*` (prefix optional) or diffusers state dict."""
    from diffusers import AutoencoderKL

    if any(k.startswith("first_stage_model.") for k in state):
        # official filter: every key containing first_stage_model, prefix cut (decoys elsewhere are ignored)
        state = {k.split("first_stage_model.", 1)[1]: v for k, v in state.items() if "first_stage_model." in k}
    if "encoder.down.0.block.0.conv1.weight" in state:  # LDM names
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        n_levels = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
        channels = [state[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] for i in range(n_levels)]
        layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)))
        cfg = dict(in_channels=state["encoder.conv_in.weight"].shape[1], out_channels=state["decoder.conv_out.weight"].shape[0],
                   down_block_types=("DownEncoderBlock2D",) * n_levels, up_block_types=("UpDecoderBlock2D",) * n_levels,
                   block_out_channels=tuple(channels), layers_per_block=layers,
                   latent_channels=state["decoder.conv_in.weight"].shape[1], norm_num_groups=32,
                   scaling_factor=LATENT_SCALE)
        state = convert_ldm_vae_checkpoint(state, cfg)
    else:
        n_levels = len({int(m.group(1)) for k in state if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))})
        channels = [state[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"].shape[0] for i in range(n_levels)]
        cfg = dict(in_channels=state["encoder.conv_in.weight"].shape[1], out_channels=state["decoder.conv_out.weight"].shape[0],
                   down_block_types=("DownEncoderBlock2D",) * n_levels, up_block_types=("UpDecoderBlock2D",) * n_levels,
                   block_out_channels=tuple(channels),
                   layers_per_block=len({k.split(".")[4] for k in state if k.startswith("encoder.down_blocks.0.resnets.")}),
                   latent_channels=state["decoder.conv_in.weight"].shape[1], norm_num_groups=32,
                   scaling_factor=LATENT_SCALE)
    vae = AutoencoderKL(**cfg)
    check_shapes(vae, state, where, SHAPE_FIX)  # key names as diffusers' AutoencoderKL has them
    missing, unexpected = vae.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{where}: the autoencoder weights do not fit an SD AutoencoderKL: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}; {SOURCES_FIX}")
    return vae.eval().requires_grad_(False)
