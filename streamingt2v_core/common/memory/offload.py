"""Sequential offload: parts of a model stay on an offload device (the CPU) and visit the compute device only
while they run. Outputs are unchanged (the same weights compute the same numbers on the device)."""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import nn

# A VAE is called through these methods, not through `forward`.
_VAE_METHODS = ("encode", "decode")


class SequentialOffload:
    """Keeps `parts` of a model (attribute names of its sub-modules; callers always name them) on
    `offload_device` and moves each one to `device` only while it runs.

    Modules move in a forward pre-hook and back in a forward hook; the VAE (the part named "vae"), called
    through `encode` and `decode` rather than `forward`, gets those two methods wrapped.

    `placement` says where each handled part is now and `moves` lists every move in order, so callers
    (and tests) can check what was on the device when. Leaving the context puts every part back where it was.
    """

    def __init__(self, model: nn.Module, device, parts: Iterable[str], offload_device="cpu",
                 non_blocking: bool = False):
        self.model = model
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device)
        self.non_blocking = non_blocking
        self.parts = tuple(parts)
        missing = [p for p in self.parts if not isinstance(getattr(model, p, None), nn.Module)]
        if missing:
            raise ValueError(f"sequential_offload: the model has no part(s) {missing}; its parts are "
                             f"{[name for name, _ in model.named_children()]}")
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

    def _remember(self, name: str) -> None:
        """Record where `name` is now, so that `remove` puts it back there."""
        self._original[name] = _module_device(self._module(name))
        self.placement[name] = self._original[name]

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
            self._remember(name)
            self._send_away(name)
            if name == "vae":
                self._hook_methods(name)
            else:
                self._hook_forward(name, lambda n=name: self._bring(n), lambda n=name: self._send_away(n))
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


def sequential_offload(model: nn.Module, device, parts: Iterable[str], offload_device="cpu",
                       non_blocking: bool = False) -> SequentialOffload:
    """Context manager (or `.install()` / `.remove()`): the named `parts` (e.g. StreamingT2V's text encoder,
    image encoder, resampler and VAE: t2v.memory.OFFLOAD_PARTS) stay on `offload_device` and visit `device`
    only while used."""
    return SequentialOffload(model, device, parts, offload_device, non_blocking)
