"""One way to run the heavy part of a node: every heavy node (first chunk, CAM extension, refinement)
goes through `heavy_run`.

- a ProgressBar over all steps of the run, with ComfyUI's interrupt check at every step;
- previews: a JPEG of one IMAGE frame, sent with the progress;
- on any exception (interrupt, out of memory, anything) the accelerator cache is freed, then the error
  propagates so ComfyUI reports it; an out-of-memory error becomes one whose message names the settings
  of this run that lower memory (oom.py).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import comfy.model_management as mm
import comfy.utils
import torch
from comfy.cli_args import args
from PIL import Image

from .oom import oom_advice, oom_test_seam_set, simulate_oom_for_tests


def jpeg_preview(image: torch.Tensor) -> tuple:
    """A ProgressBar preview of one IMAGE frame [H, W, 3] in [0, 1] (CPU)."""
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return ("JPEG", Image.fromarray(pixels), args.preview_size)


class HeavyRun:
    """Progress of one run over `total_steps` steps. `steps_per_chunk`: how the steps group into chunks,
    for the OOM test seam (oom.simulate_oom_for_tests), which is installed only when its variable is set."""

    def __init__(self, total_steps: int, steps_per_chunk: int | None = None):
        self.total = int(total_steps)
        self.done = 0
        self._bar = comfy.utils.ProgressBar(self.total)
        if steps_per_chunk and oom_test_seam_set():
            self._steps_per_chunk = int(steps_per_chunk)
            self.step = self._step_with_oom_seam

    def step(self, done: int | None = None, image: torch.Tensor | None = None) -> None:
        """A step finished (`done`: steps finished so far; default one more). Raises if the user interrupted.
        `image`: an IMAGE frame [H, W, 3] to preview with it."""
        mm.throw_exception_if_processing_interrupted()
        self.done = self.done + 1 if done is None else int(done)
        self._bar.update_absolute(self.done, self.total, None if image is None else jpeg_preview(image))

    def show(self, image: torch.Tensor) -> None:
        """Preview an IMAGE frame [H, W, 3] at the current progress."""
        self._bar.update_absolute(self.done, self.total, jpeg_preview(image))

    def _step_with_oom_seam(self, done: int | None = None, image: torch.Tensor | None = None) -> None:
        finished = self.done + 1 if done is None else int(done)
        simulate_oom_for_tests((finished - 1) // self._steps_per_chunk)
        HeavyRun.step(self, done, image)


@contextlib.contextmanager
def heavy_run(node: str, settings: Mapping[str, object], total_steps: int,
              steps_per_chunk: int | None = None) -> Iterator[HeavyRun]:
    """The heavy part of `node` as one block: yields its HeavyRun. `settings` maps the memory-relevant
    settings of the run (oom.py: dtype, size, chunk, frames, frames_to_add, memory) to their values."""
    try:
        with oom_advice(node, settings):  # unknown setting names fail here, before any work
            yield HeavyRun(total_steps, steps_per_chunk)
    except BaseException:  # interrupt, OOM, anything: free the accelerator, then let ComfyUI report it
        mm.soft_empty_cache()
        raise
