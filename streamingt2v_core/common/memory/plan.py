"""Memory modes: what the nodes offer, and the one plan each heavy run follows.

`plan()` turns a mode, the device's free memory and what the fast plan needs into a `MemoryPlan` (what to
offload, feed-forward chunks, guidance rows together or one by one, chunks per denoiser call); `applied()`
runs a block under it. Every choice leaves the outputs unchanged: only speed and peak memory differ.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Optional

from torch import nn

from .chunking import set_feed_forward_chunking
from .offload import sequential_offload

# "auto": the low-memory plan only where the fast one would not fit; "max speed": everything resident,
# as much batched as fits; "low vram": the savings that leave outputs unchanged, always.
MEMORY_MODES = ("auto", "max speed", "low vram")
# Tokens per feed-forward call in the low-memory plan: at most half of a stage-2 step (2 rows x 16 frames x
# 32 x 32) and about a tenth of a refiner chunk at 720p, where the GEGLU is the widest activation.
FEED_FORWARD_CHUNK = 16384
# Share of the free memory the fast plan fills with batched chunks: the rest is headroom for the allocator's
# rounding and fragmentation, which the meta-device estimate does not see.
_FREE_SHARE = 0.8


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


@dataclass(frozen=True)
class MemoryPlan:
    """How one heavy run uses memory."""

    low: bool                             # the low-vram plan was chosen
    offload_parts: tuple                  # module attribute names that visit the device only while they run
    feed_forward_chunk: Optional[int]     # tokens per feed-forward call (None: whole)
    rows_together: bool                   # guidance rows in one denoiser call
    chunk_batch: int                      # chunks per denoiser call (>= 1)

    def describe(self) -> str:
        """One line for the log: which plan and what it does."""
        if self.low:
            parts = ", ".join(self.offload_parts) or "nothing"
            ff = "whole" if self.feed_forward_chunk is None else f"{self.feed_forward_chunk} tokens"
            return (f"low-memory plan: offload {parts}; feed-forward in chunks of {ff}; "
                    f"guidance rows {'together' if self.rows_together else 'one by one'}; "
                    f"{self.chunk_batch} chunk(s) per denoiser call")
        return (f"fast plan: everything resident; guidance rows {'together' if self.rows_together else 'one by one'}; "
                f"{self.chunk_batch} chunk(s) per denoiser call")


def plan(mode: str, on_accelerator: bool, free_bytes: int, need_bytes: int, *, parts: Iterable[str] = (),
         per_chunk_bytes: Optional[int] = None) -> MemoryPlan:
    """The plan for `mode` (see `wants_low_memory`). Low: `parts` offloaded, feed-forward in
    FEED_FORWARD_CHUNK tokens, one guidance row per call, one chunk per call. Fast: nothing offloaded, rows
    together, and on an accelerator as many chunks per call as fit in 80% of `free_bytes` at `per_chunk_bytes`
    each (at least one; one when `per_chunk_bytes` is not given)."""
    if wants_low_memory(mode, on_accelerator, free_bytes, need_bytes):
        return MemoryPlan(True, tuple(parts), FEED_FORWARD_CHUNK, rows_together=False, chunk_batch=1)
    chunk_batch = 1
    if on_accelerator and per_chunk_bytes:
        chunk_batch = max(1, int(_FREE_SHARE * free_bytes) // per_chunk_bytes)
    return MemoryPlan(False, (), None, rows_together=True, chunk_batch=chunk_batch)


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


def applied(plan: MemoryPlan, model: nn.Module, device, offload_device=None):
    """Context manager running a block under `plan`: `low_memory(model, device, plan.offload_parts,
    plan.feed_forward_chunk, offload_device)` for a low plan (yields the SequentialOffload), nothing for a
    fast one (yields None). `offload_device` None: the CPU. Rows and chunk batch are the caller's to pass on."""
    if not plan.low:
        return contextlib.nullcontext()
    return low_memory(model, device, plan.offload_parts, plan.feed_forward_chunk,
                      "cpu" if offload_device is None else offload_device)
