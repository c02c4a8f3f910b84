"""The core's memory plan (streamingt2v_core.common.memory.plan), filled from ComfyUI's view of the device.

The core decides (low-vram plan or not, what to offload, how many chunks per call) from plain numbers;
this module supplies them: whether the device is an accelerator and how much of it is free once the model
is loaded, and ComfyUI's offload device for the parts that leave it.
"""
from __future__ import annotations

import comfy.model_management as mm
import torch

from ..streamingt2v_core.common.memory import FEED_FORWARD_CHUNK, MemoryPlan, applied, plan

# Activation counts on the meta device leave out allocator rounding and kernel workspaces.
REFINE_MARGIN = 1.15


def plan_on(device, mode: str, need_bytes: int, *, parts=(), per_chunk_bytes: int | None = None
            ) -> tuple[MemoryPlan, int]:
    """The plan for `mode` on `device`, read after the model was loaded there, and the free bytes it saw."""
    free = mm.get_free_memory(device)
    return plan(mode, not mm.is_device_cpu(device), free, need_bytes, parts=parts,
                per_chunk_bytes=per_chunk_bytes), free


def applied_on(memory_plan: MemoryPlan, model: torch.nn.Module, device):
    """The plan as a context around the run; offloaded parts go where ComfyUI offloads models."""
    return applied(memory_plan, model, device, mm.unet_offload_device())


def present_parts(model: torch.nn.Module, names) -> tuple:
    """The names in `names` that are modules of `model` (a refiner may come without a text encoder)."""
    return tuple(p for p in names if isinstance(getattr(model, p, None), torch.nn.Module))


def refine_chunk_bytes(enhancer, frames: int, mode: str, guidance: float) -> int:
    """Bytes one chunk of `frames` frames needs per UNet call, counted on a meta copy of the UNet at the
    enhancer's canvas plus the margin: for "low vram" what its plan needs (one guidance row per call,
    feed-forwards in chunks), else what the fast plan needs (both rows together unless guidance is 1)."""
    from ..streamingt2v_core.blending.sdedit import chunk_activation_bytes

    if mode == "low vram":
        return int(REFINE_MARGIN * chunk_activation_bytes(enhancer, frames, 1, FEED_FORWARD_CHUNK))
    return int(REFINE_MARGIN * chunk_activation_bytes(enhancer, frames, 1 if float(guidance) == 1.0 else 2))
