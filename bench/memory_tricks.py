"""Memory tricks that only the benchmark (and its tests) use, kept out of the product: fp8 weight storage,
attention in query slices, the CAM / base-UNet swap of StreamingT2V's two UNets, and a parameter byte count.
bench/README.md reports what each saves; tests/unit/bench/test_memory_tricks.py checks they keep the outputs
(fp8 within a measured error)."""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

from streamingt2v_core.common.attention import SDPAProcessor
from streamingt2v_core.common.memory import SequentialOffload


# --------------------------------------------------------------------------------------------------
# CAM / base UNet swap

class SwapCamOffload(SequentialOffload):
    """`SequentialOffload` of `parts` that also has StreamingT2V's CAM (`model.unet`) and base UNet
    (`model.base_model`) share the device in turn: each step moves one out and the other in (3.9 GiB of
    fp16 weights each way per step at real size: slow, for cards where the two UNets do not fit next to the
    activations). The base UNet starts on the device: `model.device` is read from it."""

    def __init__(self, model: nn.Module, device, parts: Iterable[str], offload_device="cpu",
                 non_blocking: bool = False):
        super().__init__(model, device, parts, offload_device, non_blocking)
        if not (isinstance(getattr(model, "unet", None), nn.Module)
                and isinstance(getattr(model, "base_model", None), nn.Module)):
            raise ValueError("swap_cam_offload needs a StreamingT2V model (CAM `unet` and `base_model`)")

    def _swap(self, away: str, bring: str) -> None:
        self._send_away(away)  # first out, then in: never both on the device
        self._bring(bring)

    def install(self) -> "SwapCamOffload":
        super().install()
        for name in ("unet", "base_model"):
            self._remember(name)
        self._send_away("unet")
        self._hook_forward("unet", lambda: self._swap("base_model", "unet"), None)
        self._hook_forward("base_model", lambda: self._swap("unet", "base_model"), None)
        return self


def swap_cam_offload(model: nn.Module, device, parts: Iterable[str], offload_device="cpu",
                     non_blocking: bool = False) -> SwapCamOffload:
    """Context manager: `parts` offloaded between uses and the CAM / base UNet alternating on `device`."""
    return SwapCamOffload(model, device, parts, offload_device, non_blocking)


# --------------------------------------------------------------------------------------------------
# Attention in query slices

class SlicedSDPAProcessor(SDPAProcessor):
    """`SDPAProcessor` computing attention over at most `slice_size` queries at a time (same outputs)."""

    def __init__(self, slice_size: int):
        if int(slice_size) < 1:
            raise ValueError(f"attention slice_size must be at least 1 token, got {slice_size}")
        super().__init__(int(slice_size))


def set_attention_slicing(module: nn.Module, slice_size: Optional[int]) -> int:
    """Every attention below `module` that runs on `SDPAProcessor` (the base UNet's and the CAM's) switches
    to `SlicedSDPAProcessor(slice_size)`, or back to plain `SDPAProcessor` with None. Layers on other
    processors (the VAE's, with its group norm and residual) are left alone. Returns how many were set."""
    proc = SDPAProcessor() if slice_size is None else SlicedSDPAProcessor(slice_size)
    count = 0
    for m in module.modules():
        if isinstance(getattr(m, "processor", None), SDPAProcessor) and hasattr(m, "set_processor"):
            m.set_processor(proc)
            count += 1
    return count


# --------------------------------------------------------------------------------------------------
# fp8 weight storage


FP8 = getattr(torch, "float8_e4m3fn", None)
FP8_MAX = 448.0  # largest finite float8_e4m3fn
FP8_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class Fp8Weight(nn.Module):
    """Parametrization: the stored weight is float8_e4m3fn with one float32 scale per output channel
    (amax / 448, so each channel uses the whole fp8 range); reading `module.weight` upcasts to `dtype`."""

    def __init__(self, scale: torch.Tensor, dtype: torch.dtype):
        super().__init__()
        self.register_buffer("scale", scale)
        self.dtype = dtype

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.to(self.dtype) * self.scale.to(self.dtype)


def quantize_fp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (out, ...) -> (fp8 weight, float32 scale shaped (out, 1, ...))."""
    w = weight.detach().float()
    amax = w.abs().reshape(w.shape[0], -1).amax(dim=1).clamp(min=1e-12)
    scale = (amax / FP8_MAX).reshape(-1, *([1] * (w.dim() - 1)))
    return (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def fp8_weights(module: nn.Module, skip: Callable[[str, nn.Module], bool] | None = None) -> int:
    """Stores the weight of every Linear / Conv below `module` in float8_e4m3fn (1 byte per value, half of
    fp16), upcast to the layer's previous dtype each time the layer runs. Biases, norms and embeddings keep
    their dtype. Returns how many layers were converted. Irreversible except by `remove_fp8_weights`
    (which keeps the rounded values)."""
    if FP8 is None:
        raise RuntimeError(f"torch {torch.__version__} has no float8_e4m3fn; fp8 weight storage needs torch >= 2.1")
    count = 0
    for name, m in list(module.named_modules()):
        if not isinstance(m, FP8_LAYERS) or parametrize.is_parametrized(m, "weight"):
            continue
        if skip is not None and skip(name, m):
            continue
        dtype = m.weight.dtype
        stored, scale = quantize_fp8(m.weight)
        parametrize.register_parametrization(m, "weight", Fp8Weight(scale.to(m.weight.device), dtype), unsafe=True)
        m.parametrizations.weight.original = nn.Parameter(stored.to(m.weight.device), requires_grad=False)
        count += 1
    return count


def remove_fp8_weights(module: nn.Module) -> int:
    """Undo `fp8_weights`: each layer gets back a plain weight in its compute dtype (the fp8-rounded values)."""
    count = 0
    for m in module.modules():
        if parametrize.is_parametrized(m, "weight") and isinstance(m.parametrizations.weight[0], Fp8Weight):
            with torch.no_grad():
                weight = m.weight  # upcast values; the fp8 tensor cannot be overwritten in place
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
            m.weight = nn.Parameter(weight, requires_grad=False)
            count += 1
    return count


def parameter_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer below `module` (fp8 weights count 1 byte a value)."""
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total
