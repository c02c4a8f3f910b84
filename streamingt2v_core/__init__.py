"""StreamingT2V in pure torch (no ComfyUI imports): the official stage-2 model, its loading and
conversion, the streaming loop, the refiner and the metrics.

Names are imported on first use, so `python -m streamingt2v_core.metrics` or the converter do not pay
for diffusers and transformers.
"""
import importlib

_EXPORTS = {
    "StreamingT2VConfig": "t2v.config",
    "load_config": "t2v.config",
    "StreamingT2V": "t2v.model",
    "load_streamingt2v": "t2v.model",
    "official_state_dict_shapes": "t2v.model",
    "CheckpointError": "common.weights",
    "load_refiner": "enhancers.load",
    "refine_latents": "blending.sdedit",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
