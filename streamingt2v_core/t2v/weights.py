"""StreamingT2V's weights: which files the loader expects, the converted-folder layout, and the readers and
the key check bound to them (the generic machinery is in common/weights.py and common/state_dict.py)."""
from __future__ import annotations

from typing import Iterable, Mapping

import torch

from ..common import state_dict as _state_dict
from ..common import weights as _weights
from ..common.weights import ComponentFolder

# Top-level modules of the official VideoLDM (reference section 4.2); a converted folder holds one
# `<prefix>.safetensors` per entry, with the prefix stripped from its keys.
COMPONENT_PREFIXES = ("base_model", "unet", "resampler", "image_encoder", "text_encoder", "vae")
# Value of "format" in the config.json the converter writes.
COMPONENTS_FORMAT = "streamingt2v-components"
OFFICIAL_FIX = (
    "put the official streaming_t2v.ckpt (https://huggingface.co/PAIR/StreamingT2V, file streaming_t2v.ckpt) "
    "or a folder converted from it with `python -m streamingt2v_core.convert` in models/streamingt2v/"
)
FOLDER = ComponentFolder(COMPONENT_PREFIXES, COMPONENTS_FORMAT,
                         convert_hint="convert the official checkpoint into it with "
                                      "`python -m streamingt2v_core.convert streaming_t2v.ckpt {folder}`")


def read_state_dict_with_meta(source) -> tuple[dict[str, torch.Tensor], dict]:
    """StreamingT2V weights from the official .ckpt, a flat .safetensors, a converted folder or a state
    dict; see common.weights.read_weights_with_meta for `meta`."""
    return _weights.read_weights_with_meta(source, OFFICIAL_FIX, FOLDER)


def read_state_dict(source) -> dict[str, torch.Tensor]:
    return read_state_dict_with_meta(source)[0]


def describe_foreign_layout(keys: Iterable[str]) -> str | None:
    """What a file is when it is not streaming_t2v.ckpt (None: StreamingT2V's own keys, or unknown)."""
    return _state_dict.describe_foreign_layout(keys, COMPONENT_PREFIXES, "StreamingT2V")


def validate_state_dict(state: Mapping[str, torch.Tensor], expected_shapes: Mapping[str, tuple],
                        source_name: str, ignore: Iterable[str] = (), limit: int = 20) -> None:
    """CheckpointError listing the missing, unexpected and mis-shaped keys against the StreamingT2V model."""
    _state_dict.validate_state_dict(state, expected_shapes, source_name, model="StreamingT2V",
                                    expected_file="streaming_t2v.ckpt", fix=OFFICIAL_FIX,
                                    prefixes=COMPONENT_PREFIXES, ignore=ignore, limit=limit)
