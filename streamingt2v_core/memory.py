"""Memory options for small cards, pure torch: sequential offload of the parts not in use, attention in query
slices, fp8 weight storage with upcast at use, and a meta-device estimate of activation memory.

None of them changes what is computed: offload and slicing give the same numbers (to float rounding of the
slice boundaries, i.e. none here); fp8 storage rounds the weights (relative error measured in
tests/unit/test_memory.py and bench/README.md).
"""
from __future__ import annotations

import contextlib
import functools
import weakref
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .attention import SDPAProcessor, sliced_sdpa  # noqa: F401  (sliced_sdpa: public here too)

# Parts of StreamingT2V used once per prompt, per stream or per chunk, never inside a denoising step.
OFFLOAD_PARTS = ("text_encoder", "image_encoder", "resampler", "vae")
_VAE_METHODS = ("encode", "decode")


# --------------------------------------------------------------------------------------------------
# Sequential offload

class SequentialOffload:
    """Keeps `parts` of a model on `offload_device` and moves each one to `device` only while it runs.

    Modules move in a forward pre-hook and back in a forward hook; the VAE, called through `encode` and
    `decode` rather than `forward`, gets those two methods wrapped. With `swap_cam`, the CAM (`model.unet`)
    and the base UNet (`model.base_model`) share the device in turn: each step moves one out and the other
    in (3.9 GiB of fp16 weights each way per step at real size: slow, for cards where the two UNets do
    not fit next to the activations).

    `placement` says where each handled part is now and `moves` lists every move in order, so callers
    (and tests) can check what was on the device when. Leaving the context puts every part back where it was.
    """

    def __init__(self, model: nn.Module, device, parts: Iterable[str] = OFFLOAD_PARTS, swap_cam: bool = False,
                 offload_device="cpu", non_blocking: bool = False):
        self.model = model
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device)
        self.non_blocking = non_blocking
        self.parts = tuple(parts)
        missing = [p for p in self.parts if not isinstance(getattr(model, p, None), nn.Module)]
        if missing:
            raise ValueError(f"sequential_offload: the model has no part(s) {missing}; offloadable parts are "
                             f"{[p for p in OFFLOAD_PARTS if isinstance(getattr(model, p, None), nn.Module)]}")
        self.swap_cam = swap_cam
        if swap_cam and not (isinstance(getattr(model, "unet", None), nn.Module)
                             and isinstance(getattr(model, "base_model", None), nn.Module)):
            raise ValueError("sequential_offload(swap_cam=True) needs a StreamingT2V model (CAM `unet` and `base_model`)")
        self.placement: dict = {}
        self.moves: list = []
        self._handles: list = []
        self._wrapped: list = []
        self._original: dict = {}

    # -- moving ---------------------------------------------------------------------------------------
    def _module(self, name: str) -> nn.Module:
        return getattr(self.model, name)

    def _move(self, name: str, device: torch.device) -> None:
        if self.placement.get(name) == device:
            return
        self._module(name).to(device, non_blocking=self.non_blocking)
        self.placement[name] = device
        self.moves.append((name, str(device)))

    def _bring(self, name: str) -> None:
        self._move(name, self.device)

    def _send_away(self, name: str) -> None:
        self._move(name, self.offload_device)

    def _swap(self, away: str, bring: str) -> None:
        self._send_away(away)  # first out, then in: never both on the device
        self._bring(bring)

    # -- hooks ----------------------------------------------------------------------------------------
    def _hook_forward(self, name: str, before: Callable[[], None], after: Optional[Callable[[], None]]) -> None:
        module = self._module(name)

        def pre(_m, _a):
            before()  # a pre-hook must return None, or its value replaces the inputs

        def post(_m, _a, _o):
            after()  # likewise for the output

        self._handles.append(module.register_forward_pre_hook(pre))
        if after is not None:  # always_call: sent away even when the forward raises (interrupt, OOM)
            self._handles.append(module.register_forward_hook(post, always_call=True))

    def _hook_methods(self, name: str) -> None:
        module = self._module(name)
        for method in _VAE_METHODS:
            bound = getattr(module, method, None)
            if bound is None:
                continue

            def wrapped(*args, _bound=bound, **kwargs):
                self._bring(name)
                try:
                    return _bound(*args, **kwargs)
                finally:
                    self._send_away(name)

            setattr(module, method, wrapped)  # instance attribute shadows the class method until removed
            self._wrapped.append((module, method))

    def install(self) -> "SequentialOffload":
        for name in self.parts:
            self._original[name] = _module_device(self._module(name))
            self.placement[name] = self._original[name]
            self._send_away(name)
            if name == "vae":
                self._hook_methods(name)
            else:
                self._hook_forward(name, lambda n=name: self._bring(n), lambda n=name: self._send_away(n))
        if self.swap_cam:
            for name in ("unet", "base_model"):
                self._original[name] = _module_device(self._module(name))
                self.placement[name] = self._original[name]
            self._send_away("unet")  # the base UNet stays: `model.device` is read from it
            self._hook_forward("unet", lambda: self._swap("base_model", "unet"), None)
            self._hook_forward("base_model", lambda: self._swap("unet", "base_model"), None)
        return self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        for module, method in self._wrapped:
            delattr(module, method)
        self._handles, self._wrapped = [], []
        for name, device in self._original.items():
            self._move(name, device)

    def __enter__(self) -> "SequentialOffload":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.remove()


def _module_device(module: nn.Module) -> torch.device:
    t = next(module.parameters(), None)
    if t is None:
        t = next(module.buffers(), None)
    return t.device if t is not None else torch.device("cpu")


def sequential_offload(model: nn.Module, device, parts: Iterable[str] = OFFLOAD_PARTS, swap_cam: bool = False,
                       offload_device="cpu", non_blocking: bool = False) -> SequentialOffload:
    """Context manager (or `.install()` / `.remove()`): text encoder, image encoder, resampler and VAE stay
    on `offload_device` and visit `device` only while used; `swap_cam` also alternates CAM and base UNet."""
    return SequentialOffload(model, device, parts, swap_cam, offload_device, non_blocking)


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
# Feed-forward in token chunks

def _chunked_feed_forward(ff: nn.Module, chunk_tokens: int, hidden_states: torch.Tensor, *args, **kwargs):
    forward = type(ff).forward
    flat = hidden_states.reshape(-1, hidden_states.shape[-1])
    if flat.shape[0] <= chunk_tokens:
        return forward(ff, hidden_states, *args, **kwargs)
    out = torch.cat([forward(ff, flat[i:i + chunk_tokens], *args, **kwargs) for i in range(0, flat.shape[0], chunk_tokens)])
    return out.reshape(*hidden_states.shape[:-1], out.shape[-1])


def set_feed_forward_chunking(module: nn.Module, chunk_tokens: Optional[int]) -> int:
    """Every diffusers `FeedForward` below `module` runs on at most `chunk_tokens` token vectors at a time
    (None: all at once). The feed-forward is per token, so outputs are the same; its 4x-wide GEGLU hidden
    (8x with the gate) is the largest activation of the UNets at high resolution. Unlike diffusers'
    `enable_forward_chunking`, any token count works (no divisibility by the chunk size). Returns the count."""
    from diffusers.models.attention import FeedForward

    if chunk_tokens is not None and int(chunk_tokens) < 1:
        raise ValueError(f"feed-forward chunk_tokens must be at least 1, got {chunk_tokens}")
    count = 0
    for m in module.modules():
        if isinstance(m, FeedForward):
            m.__dict__.pop("forward", None)
            if chunk_tokens is not None:
                m.forward = functools.partial(_chunked_feed_forward, m, int(chunk_tokens))
            count += 1
    return count


# --------------------------------------------------------------------------------------------------
# Memory modes: what the nodes offer

# "auto": the low-memory plan only where the fast one would not fit; "max speed": everything resident,
# as much batched as fits; "low vram": the savings that leave outputs unchanged, always.
MEMORY_MODES = ("auto", "max speed", "low vram")
# Tokens per feed-forward call in the low-memory plan: at most half of a stage-2 step (2 rows x 16 frames x
# 32 x 32) and about a tenth of a refiner chunk at 720p, where the GEGLU is the widest activation.
FEED_FORWARD_CHUNK = 16384


def memory_mode_problem(mode) -> str | None:
    """The message for a `memory` value that is not a mode (None: fine); nodes return it at validation."""
    return None if mode in MEMORY_MODES else f"memory: '{mode}' is not one of {list(MEMORY_MODES)}"


def wants_low_memory(mode: str, on_accelerator: bool, free_bytes: int, need_bytes: int) -> bool:
    """Whether to run the low-memory plan: always for "low vram", never for "max speed", and for "auto" on an
    accelerator whose free memory (after the model is loaded) is below what the fast plan needs. On the CPU
    "auto" never offloads: there is nowhere to offload to."""
    if memory_mode_problem(mode):
        raise ValueError(memory_mode_problem(mode))
    if mode == "low vram":
        return True
    if mode == "max speed" or not on_accelerator:
        return False
    return free_bytes < need_bytes


@contextlib.contextmanager
def low_memory(model: nn.Module, device, parts: Iterable[str], feed_forward_chunk: Optional[int] = FEED_FORWARD_CHUNK,
               offload_device="cpu"):
    """The low-memory plan as one context: `parts` offloaded between uses (sequential_offload) and every
    feed-forward in chunks of `feed_forward_chunk` tokens. Outputs are unchanged; leaving the context restores
    the model (placement and feed-forwards). Yields the SequentialOffload (its `moves` say what moved)."""
    set_feed_forward_chunking(model, feed_forward_chunk)
    try:
        with sequential_offload(model, device, parts, offload_device=offload_device) as offload:
            yield offload
    finally:
        set_feed_forward_chunking(model, None)


# --------------------------------------------------------------------------------------------------
# fp8 weight storage

FP8 = getattr(torch, "float8_e4m3fn", None)
FP8_MAX = 448.0  # largest finite float8_e4m3fn
_FP8_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


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
        if not isinstance(m, _FP8_LAYERS) or parametrize.is_parametrized(m, "weight"):
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


# --------------------------------------------------------------------------------------------------
# Activation memory, estimated on the meta device

class LiveTensorBytes(TorchDispatchMode):
    """While active, tracks the bytes of tensor storages created inside it and still referenced (`live`) and
    their high-water mark (`peak`). Works on any device; tensors made before entering are not counted."""

    def __init__(self):
        super().__init__()
        self.live, self.peak = 0, 0
        self._refs: dict = {}  # storage key -> [tensor count, bytes]

    def _release(self, key) -> None:
        entry = self._refs.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            key = st._cdata
            entry = self._refs.get(key)
            if entry is None:
                if any(isinstance(a, torch.Tensor) and a.untyped_storage()._cdata == key
                       for a in tree_flatten((args, kwargs))[0]):
                    continue  # an in-place op or view of an input created before the mode: not new memory
                entry = self._refs[key] = [0, st.nbytes()]
                self.live += entry[1]
                self.peak = max(self.peak, self.live)
            entry[0] += 1
            weakref.finalize(t, self._release, key)
        return out


class _FusedAttention(torch.overrides.TorchFunctionMode):
    """F.scaled_dot_product_attention as a fused kernel allocates: the output only (no score matrix)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, _k, v = args[:3]
            return q.new_empty(*q.shape[:-1], v.shape[-1])
        return func(*args, **kwargs)


def activation_peak_bytes(fn: Callable[[], object], fused_attention: bool = True) -> int:
    """Peak bytes of the tensors `fn` creates that are alive at the same time, run on meta tensors (no
    memory is used). Inputs and weights made before the call are not counted. `fused_attention` models
    flash / memory-efficient SDPA (what CUDA runs for fp16/bf16); False counts the full score matrices of
    the math kernel. An estimate: allocator rounding, fragmentation and kernel workspaces are not in it."""
    tracker = LiveTensorBytes()
    fused = _FusedAttention() if fused_attention else contextlib.nullcontext()
    with torch.no_grad(), fused, tracker:
        out = fn()
        del out
    return tracker.peak
