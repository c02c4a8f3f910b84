"""The MS-Vid2Vid-XL autoencoder: the SD 2.1 `first_stage_model` (reference/official_refiner.md §4, LDM
names) mapped onto diffusers' AutoencoderKL."""
from __future__ import annotations

import re
from typing import Mapping

import torch

from ...common.state_dict import check_dtypes, check_shapes, module_dtypes
from ...common.weights import CheckpointError
from .files import SHAPE_FIX, SOURCES_FIX

# SD 2.1 autoencoder scale, used by the official refiner: a fact of this model (the StreamingT2V config
# states its own ModelScope autoencoder's, which happens to be the same SD number).
LATENT_SCALE = 0.18215


def _ldm_names(keys: list[str], cfg: dict) -> dict[str, str]:
    """diffusers key -> LDM key of diffusers' own VAE conversion, found by converting numbered 1-element
    stand-ins (the conversion renames and slices, so each value says which key it came from)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    marked = {k: torch.full((1, 1, 1, 1), float(i), dtype=torch.float64, device="cpu")  # also under meta
              for i, k in enumerate(keys)}
    return {k: keys[int(v.reshape(-1)[0])] for k, v in convert_ldm_vae_checkpoint(marked, cfg).items()}


def build_autoencoder(state: Mapping[str, torch.Tensor], where="autoencoder weights"):
    """diffusers AutoencoderKL from an LDM `first_stage_model.*` (prefix optional) or diffusers state dict."""
    from diffusers import AutoencoderKL

    file_keys = {k: k for k in state}  # the key as the file names it, for errors
    if any(k.startswith("first_stage_model.") for k in state):
        # official filter: every key containing first_stage_model, prefix cut (decoys elsewhere are ignored)
        file_keys = {k.split("first_stage_model.", 1)[1]: k for k in state if "first_stage_model." in k}
        state = {short: state[k] for short, k in file_keys.items()}
    names = file_state = None  # diffusers key -> the file's LDM key, and the file's tensors

    def dim(key: str, ndim: int, index: int) -> int:
        # the keys the architecture is read from: named when missing or odd-shaped (a 1-element tensor)
        if key not in state:
            raise CheckpointError(f"{where}: no {key}, so not an SD autoencoder; {SOURCES_FIX}")
        shape = tuple(state[key].shape)
        if len(shape) != ndim or min(shape, default=0) < 1:
            raise CheckpointError(f"{where}: {file_keys[key]} has shape {list(shape)}, expected {ndim} dims; "
                                  f"{SHAPE_FIX}")
        return int(shape[index])

    def count(prefix: str) -> int:
        """1 + the largest index N of the keys `<prefix>.N.*`."""
        found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"\.(\d+)\.", k))}
        if not found:
            raise CheckpointError(f"{where}: no {prefix}.* keys, so not an SD autoencoder; {SOURCES_FIX}")
        return 1 + max(found)

    if "encoder.down.0.block.0.conv1.weight" in state:  # LDM names
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        n_levels = count("encoder.down")
        channels = [dim(f"encoder.down.{i}.block.0.conv2.weight", 4, 0) for i in range(n_levels)]
        cfg = dict(in_channels=dim("encoder.conv_in.weight", 4, 1), out_channels=dim("decoder.conv_out.weight", 4, 0),
                   down_block_types=("DownEncoderBlock2D",) * n_levels, up_block_types=("UpDecoderBlock2D",) * n_levels,
                   block_out_channels=tuple(channels), layers_per_block=count("encoder.down.0.block"),
                   latent_channels=dim("decoder.conv_in.weight", 4, 1), norm_num_groups=32,
                   scaling_factor=LATENT_SCALE)
        try:
            names = {k: file_keys[v] for k, v in _ldm_names(list(state), cfg).items()}
            file_state = {file_keys[k]: v for k, v in state.items()}
            state = convert_ldm_vae_checkpoint(state, cfg)
        except KeyError as exc:  # diffusers indexes the LDM keys it renames
            raise CheckpointError(f"{where}: the autoencoder weights lack {exc}; {SOURCES_FIX}") from None
    else:
        n_levels = count("encoder.down_blocks")
        channels = [dim(f"encoder.down_blocks.{i}.resnets.0.conv2.weight", 4, 0) for i in range(n_levels)]
        cfg = dict(in_channels=dim("encoder.conv_in.weight", 4, 1), out_channels=dim("decoder.conv_out.weight", 4, 0),
                   down_block_types=("DownEncoderBlock2D",) * n_levels, up_block_types=("UpDecoderBlock2D",) * n_levels,
                   block_out_channels=tuple(channels),
                   layers_per_block=count("encoder.down_blocks.0.resnets"),
                   latent_channels=dim("decoder.conv_in.weight", 4, 1), norm_num_groups=32,
                   scaling_factor=LATENT_SCALE)
    if names is None and any(short != k for short, k in file_keys.items()):
        names = {short: file_keys[short] for short in state}
        file_state = {file_keys[short]: v for short, v in state.items()}
    try:
        vae = AutoencoderKL(**cfg)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. channels that 32 groups cannot split
        ldm = "encoder.down.0.block.0.conv1.weight" in file_keys
        keys = [file_keys.get(k, k) for k in (f"encoder.down.{i}.block.0.conv2.weight" if ldm else
                                              f"encoder.down_blocks.{i}.resnets.0.conv2.weight"
                                              for i in range(len(cfg["block_out_channels"])))]
        raise CheckpointError(f"{where}: the tensor shapes describe no SD autoencoder (block_out_channels "
                              f"{cfg['block_out_channels']}, read from {', '.join(keys)}: {exc}); {SHAPE_FIX}") from exc
    check_shapes(vae, state, where, SHAPE_FIX, names, file_state)  # each key as the file names it
    check_dtypes(state, module_dtypes(vae), where, SOURCES_FIX, names)
    missing, unexpected = vae.load_state_dict(state, strict=False)
    unexpected = [(names or {}).get(k, k) for k in unexpected]
    if missing or unexpected:
        raise CheckpointError(f"{where}: the autoencoder weights do not fit an SD AutoencoderKL: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}; {SOURCES_FIX}")
    return vae.eval().requires_grad_(False)
