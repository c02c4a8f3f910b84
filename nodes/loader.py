"""Loaders: the StreamingT2V model (stage 2) and the ModelScope text-to-video UNet (stage 1).

Both load on the CPU and are wrapped in a ComfyUI ModelPatcher, so `comfy.model_management` moves them
to the GPU when a node needs them and back off when another model needs the memory.
"""
from __future__ import annotations

import logging
import os

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths
import torch
from comfy_api.latest import io

from .errors import model_name_problem
from .types import ModelScopeUNet, StreamingT2VModel

log = logging.getLogger("StreamingT2V")

FOLDER = "streamingt2v"
DTYPES = ["auto", "fp16", "bf16", "fp32"]
_TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# A folder written by `python -m streamingt2v_core.convert` holds one file per official component.
_CONVERTED_MARKERS = ("base_model.safetensors", "config.json")
_WEIGHT_EXTENSIONS = {".ckpt", ".pt", ".pth", ".bin", ".safetensors", ".sft"}


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


DTYPE_NAMES = {v: k for k, v in _TORCH_DTYPES.items()}


def resolve_dtype(choice: str, params: int) -> torch.dtype:
    if choice in _TORCH_DTYPES:
        return _TORCH_DTYPES[choice]
    # auto: what ComfyUI picks for a diffusion model of this size on this device (fp32 on the CPU)
    return mm.unet_dtype(model_params=params, supported_dtypes=[torch.bfloat16, torch.float16, torch.float32])


def _is_converted_folder(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, m)) for m in _CONVERTED_MARKERS)


def streamingt2v_choices() -> list:
    """Checkpoint files and converted folders in every registered models/streamingt2v path. Files inside a
    converted folder and sidecar .json configs are not offered on their own."""
    folders = []
    for root in folder_paths.get_folder_paths(FOLDER):
        if os.path.isdir(root):
            folders += [d for d in sorted(os.listdir(root)) if _is_converted_folder(os.path.join(root, d))]
    files = [f for f in folder_paths.get_filename_list(FOLDER)
             if os.path.splitext(f)[1].lower() in _WEIGHT_EXTENSIONS
             and f.replace("\\", "/").split("/")[0] not in folders]
    return sorted(set(files)) + sorted(set(folders))


def streamingt2v_path(name: str) -> str | None:
    """The file or converted folder `name` in models/streamingt2v (callers refuse names that leave the
    folder first, with model_name_problem)."""
    path = folder_paths.get_full_path(FOLDER, name)
    if path is not None:
        return path
    for root in folder_paths.get_folder_paths(FOLDER):
        cand = os.path.join(root, name)
        if _is_converted_folder(cand):
            return cand
    return None


def _missing_message(input_name: str, name: str, key: str, choices: list) -> str:
    where = ", ".join(folder_paths.get_folder_paths(key)) or f"models/{key}"
    have = ", ".join(choices[:10]) or "none"
    return (f"{input_name}: '{name}' is not in models/{key} (searched: {where}). Put the file there "
            f"(see the README's weights table) or pick one that is there: {have}")


class LoadStreamingT2V(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoadStreamingT2V",
            display_name="Load StreamingT2V",
            category="StreamingT2V/loaders",
            description="Loads the StreamingT2V model (CAM, APM, text encoder, VAE) from models/streamingt2v: the "
                        "official .ckpt (read memory-mapped, never unpickling code), a flat .safetensors or a "
                        "converted folder.",
            inputs=[
                io.Combo.Input("ckpt_name", options=streamingt2v_choices(),
                               tooltip="Official streaming_t2v.ckpt, a .safetensors with the official key names, "
                                       "or a folder converted with `python -m streamingt2v_core.convert`."),
                io.Combo.Input("dtype", options=DTYPES, default="auto",
                               tooltip="Weight dtype. auto: what ComfyUI picks for this device (fp32 on the CPU). "
                                       "The official code runs stage 2 in fp32."),
            ],
            outputs=[StreamingT2VModel.Output("streamingt2v_model", display_name="model")],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name, dtype="auto"):
        problem = model_name_problem("ckpt_name", ckpt_name, FOLDER)
        if problem:
            return problem
        if streamingt2v_path(ckpt_name) is None:
            return _missing_message("ckpt_name", ckpt_name, FOLDER, streamingt2v_choices())
        if dtype not in DTYPES:
            return f"dtype: '{dtype}' is not one of {DTYPES}"
        return True

    @classmethod
    def execute(cls, ckpt_name, dtype="auto") -> io.NodeOutput:
        from ..streamingt2v_core import load_streamingt2v

        problem = model_name_problem("ckpt_name", ckpt_name, FOLDER)
        if problem:
            raise ValueError(problem)
        path = streamingt2v_path(ckpt_name)
        if path is None:
            raise FileNotFoundError(_missing_message("ckpt_name", ckpt_name, FOLDER, streamingt2v_choices()))
        # 3.2 B parameters for the real model; the tiny one is far smaller but any estimate works for "auto"
        torch_dtype = resolve_dtype(dtype, 3_230_000_000)
        model = load_streamingt2v(path, device="cpu", dtype=torch_dtype)
        log.info("StreamingT2V: loaded %s (%s, %dx%d)", ckpt_name, torch_dtype, model.config.width, model.config.height)
        return io.NodeOutput(PatchedModel(model, ckpt_name))


def modelscope_choices() -> list:
    return [f for f in folder_paths.get_filename_list("diffusion_models")
            if os.path.splitext(f)[1].lower() in _WEIGHT_EXTENSIONS]


class LoadModelScopeT2V(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoadModelScopeT2V",
            display_name="Load ModelScope T2V UNet",
            category="StreamingT2V/loaders",
            description="Loads the ModelScope text-to-video UNet (diffusers UNet3DConditionModel) from "
                        "models/diffusion_models, for the first chunk. A file inside a diffusers folder uses "
                        "the folder's config.json; a single file uses <name>.json beside it or its shapes.",
            inputs=[
                io.Combo.Input("unet_name", options=modelscope_choices(),
                               tooltip="e.g. text-to-video-ms-1.7b/unet/diffusion_pytorch_model.safetensors"),
                io.Combo.Input("dtype", options=DTYPES, default="auto",
                               tooltip="Weight dtype. auto: what ComfyUI picks (the official stage 1 runs fp16 "
                                       "on the GPU)."),
            ],
            outputs=[ModelScopeUNet.Output("t2v_unet", display_name="t2v_unet")],
        )

    @classmethod
    def validate_inputs(cls, unet_name, dtype="auto"):
        problem = model_name_problem("unet_name", unet_name, "diffusion_models")
        if problem:
            return problem
        if folder_paths.get_full_path("diffusion_models", unet_name) is None:
            return _missing_message("unet_name", unet_name, "diffusion_models", modelscope_choices())
        if dtype not in DTYPES:
            return f"dtype: '{dtype}' is not one of {DTYPES}"
        return True

    @classmethod
    def execute(cls, unet_name, dtype="auto") -> io.NodeOutput:
        from ..streamingt2v_core.init_t2v import load_modelscope_unet

        problem = model_name_problem("unet_name", unet_name, "diffusion_models")
        if problem:
            raise ValueError(problem)
        path = folder_paths.get_full_path("diffusion_models", unet_name)
        if path is None:
            raise FileNotFoundError(_missing_message("unet_name", unet_name, "diffusion_models", modelscope_choices()))
        unet = load_modelscope_unet(path, device="cpu", dtype=resolve_dtype(dtype, 1_410_000_000))
        return io.NodeOutput(PatchedModel(unet, unet_name))


LOADER_NODES = [LoadStreamingT2V, LoadModelScopeT2V]
