"""Out-of-memory handling for the pack's long-running nodes (run.heavy_run uses it for every heavy node).

`oom_advice(node, settings)` wraps the heavy part of a node (or `advise_out_of_memory(exc, node, settings)`
in an existing `except` clause): when torch runs out of memory (accelerator,
or the CPU allocator) it frees what ComfyUI holds and raises an error whose message names the settings
of this run that lower memory. Nothing else is caught; the error always propagates, so ComfyUI reports
it as `execution_error` (ComfyUI also unloads every model on an OOM error: our error derives from
torch.OutOfMemoryError, so that path runs too).

`simulate_oom_for_tests(chunk_index)` is a test seam: it raises torch's OOM error inside the chunk loop
only when the environment variable STREAMINGT2V_TEST_OOM_AT_CHUNK is set (to the 0-based chunk index).
run.HeavyRun installs it as its step hook only when the variable is set, so production steps never see it.

Imports nothing of ComfyUI at module level, so tests can load it without a running ComfyUI.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, Mapping

import torch

log = logging.getLogger("StreamingT2V")

OOM_TEST_ENV = "STREAMINGT2V_TEST_OOM_AT_CHUNK"

# What lowers memory, per setting a node reports (its current value fills {value}).
_ADVICE = {
    "dtype": "dtype fp16 or bf16 in the loader node (the weights are {value} now; fp16/bf16 halves them)",
    "size": "smaller frames ({value} now): a smaller width/height in the init node",
    "chunk": "a smaller refiner chunk (chunk is {value} now; keep overlap below it)",
    "frames": "fewer frames per run ({value} now): refine the video in parts",
    "frames_to_add": "fewer frames per run (frames_to_add is {value} now): chain several CAMExtendChunk nodes "
                     "or runs; the stream so far is kept in host memory",
    "memory": "memory 'low vram' in this node (it is '{value}' now): parts not in use leave the accelerator "
              "and the feed-forwards run in chunks, with the same frames",
}
_OFFLOAD = ("offload: start ComfyUI with --lowvram (or --novram, or --reserve-vram GB) so weights not in use "
            "leave the accelerator, and close other programs using it")
# The CPU allocator reports exhaustion as a plain RuntimeError with this text (no OOM type on the CPU).
_CPU_OOM_TEXT = ("DefaultCPUAllocator: can't allocate memory", "DefaultCPUAllocator: not enough memory")


class StreamingT2VOutOfMemoryError(torch.OutOfMemoryError):
    """torch's out-of-memory error, with a message that says which settings lower memory."""


def oom_message(node: str, settings: Mapping[str, object], cause: BaseException | None = None) -> str:
    """The message for an out-of-memory error in `node`. `settings` maps the memory-relevant settings of
    the run (keys of _ADVICE: dtype, size, chunk, frames, frames_to_add, memory) to their current values."""
    unknown = sorted(set(settings) - set(_ADVICE))
    if unknown:
        raise KeyError(f"oom_message: no advice for {unknown}; known settings: {sorted(_ADVICE)}")
    tips = [_ADVICE[k].format(value=v) for k, v in settings.items()] + [_OFFLOAD]
    what = ""
    if cause is not None:
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        what = f" ({first[:300]})"
    return (f"{node}: out of memory{what}. The models were unloaded and the cache freed, so the next prompt can "
            f"run. To lower memory, try: " + "; ".join(f"({i}) {t}" for i, t in enumerate(tips, 1)) + ".")


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc) for t in _CPU_OOM_TEXT)


def free_after_oom() -> None:
    """Give the memory back: unload every model ComfyUI holds and empty the allocator caches."""
    import comfy.model_management as mm

    mm.unload_all_models()
    mm.soft_empty_cache(force=True)


def advise_out_of_memory(exc: BaseException, node: str, settings: Mapping[str, object]) -> None:
    """For a node's `except` clause: if `exc` is an out-of-memory error, free memory and raise
    StreamingT2VOutOfMemoryError (from `exc`) naming `settings`; otherwise return, and the caller re-raises."""
    if isinstance(exc, StreamingT2VOutOfMemoryError) or not _is_out_of_memory(exc):
        return  # not memory, or an inner part already freed memory and wrote the advice
    free_after_oom()
    message = oom_message(node, settings, exc)
    log.error("StreamingT2V: %s", message)
    raise StreamingT2VOutOfMemoryError(message) from exc


@contextlib.contextmanager
def oom_advice(node: str, settings: Mapping[str, object]) -> Iterator[None]:
    """Re-raise an out-of-memory error inside the block as StreamingT2VOutOfMemoryError naming `settings`,
    after freeing memory. Every other exception passes through untouched."""
    oom_message(node, settings)  # unknown setting names fail here, not only when memory runs out
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        advise_out_of_memory(exc, node, settings)
        raise


def oom_test_seam_set() -> bool:
    """Whether the OOM test seam is on (STREAMINGT2V_TEST_OOM_AT_CHUNK set): read when a run starts."""
    return bool(os.environ.get(OOM_TEST_ENV))


def simulate_oom_for_tests(chunk_index: int) -> None:
    """Test seam: raise torch.OutOfMemoryError when STREAMINGT2V_TEST_OOM_AT_CHUNK equals `chunk_index`.
    Does nothing unless the variable is set."""
    value = os.environ.get(OOM_TEST_ENV)
    if not value:
        return
    if int(chunk_index) == int(value):
        raise torch.OutOfMemoryError(f"simulated out of memory at chunk {chunk_index} ({OOM_TEST_ENV}={value})")
