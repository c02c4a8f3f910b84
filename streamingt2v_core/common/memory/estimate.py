"""Activation memory, estimated on the meta device (no memory used) or counted live on any device."""
from __future__ import annotations

import contextlib
import weakref
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


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
