"""Our torch models as ComfyUI ModelPatchers, so `comfy.model_management` moves them to the compute device
when a node needs them and back off when another model needs the memory; and the loaders' dtype choices."""
from __future__ import annotations

import comfy.model_management as mm
import comfy.model_patcher
import torch

from ..streamingt2v_core.common.dtypes import DTYPES

DTYPE_CHOICES = ["auto", *DTYPES]  # the loaders' `dtype` input: auto, fp16, bf16, fp32


class _Carrier(torch.nn.Module):
    """What the ModelPatcher moves: the model plus the plain `device` attribute ModelPatcher reads and
    writes (our models derive `device` from their weights and cannot be assigned one)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module
        self.device = next(module.parameters()).device

    def get_dtype(self):
        return next(self.module.parameters()).dtype


class PatchedModel:
    """A loaded model with its ModelPatcher. `on_device()` asks ComfyUI to load it (freeing other models
    if needed) and returns the model, ready on the compute device."""

    def __init__(self, module: torch.nn.Module, name: str):
        self.module = module
        self.name = name
        self.patcher = comfy.model_patcher.ModelPatcher(
            _Carrier(module), load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())

    def on_device(self, *others: "PatchedModel", memory_required: int = 0) -> torch.nn.Module:
        # Our layers are plain torch ones (not comfy.ops), so ComfyUI cannot split them between devices:
        # always load whole.
        mm.load_models_gpu([self.patcher] + [o.patcher for o in others], memory_required=memory_required,
                           force_full_load=True)
        return self.module


def dtype_problem(dtype) -> str | None:
    return None if dtype in DTYPE_CHOICES else f"dtype: '{dtype}' is not one of {DTYPE_CHOICES}"


def resolve_dtype(choice: str, params: int) -> torch.dtype:
    if choice in DTYPES:
        return DTYPES[choice]
    # auto: what ComfyUI picks for a diffusion model of this size on this device (fp32 on the CPU)
    return mm.unet_dtype(model_params=params, supported_dtypes=[torch.bfloat16, torch.float16, torch.float32])
