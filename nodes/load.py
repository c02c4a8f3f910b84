"""Loaders: the StreamingT2V model (stage 2), the ModelScope text-to-video UNet (stage 1) and the refiner
(stage 3).

All load on the CPU and are wrapped in a ComfyUI ModelPatcher, so `comfy.model_management` moves them
to the GPU when a node needs them and back off when another model needs the memory.
"""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..comfy_bridge import models
from ..comfy_bridge.patcher import DTYPE_CHOICES, PatchedModel, dtype_problem, resolve_dtype
from .types import ModelScopeUNet, RefinerModel, StreamingT2VModel

log = logging.getLogger("StreamingT2V")


def loader_schema(node_id: str, display_name: str, description: str, name_input: io.Combo.Input,
                  dtype_tooltip: str, output) -> io.Schema:
    """Every loader has the same two inputs: the model's name in its folder, then the weight dtype."""
    return io.Schema(
        node_id=node_id, display_name=display_name, category="StreamingT2V/loaders", description=description,
        inputs=[name_input, io.Combo.Input("dtype", options=DTYPE_CHOICES, default="auto", tooltip=dtype_tooltip)],
        outputs=[output],
    )


class LoadStreamingT2V(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return loader_schema(
            "LoadStreamingT2V", "Load StreamingT2V",
            "Loads the StreamingT2V model (CAM, APM, text encoder, VAE) from models/streamingt2v: the official .ckpt "
            "(read memory-mapped, never unpickling code), a flat .safetensors or a converted folder.",
            io.Combo.Input("ckpt_name", options=models.streamingt2v_choices(),
                           tooltip="Official streaming_t2v.ckpt, a .safetensors with the official key names, "
                                   "or a folder converted with `python -m streamingt2v_core.convert`."),
            "Weight dtype. auto: what ComfyUI picks for this device (fp32 on the CPU). The official code runs "
            "stage 2 in fp32.",
            StreamingT2VModel.Output("streamingt2v_model", display_name="model"))

    @classmethod
    def validate_inputs(cls, ckpt_name, dtype="auto"):
        return models.streamingt2v_problem("ckpt_name", ckpt_name) or dtype_problem(dtype) or True

    @classmethod
    def execute(cls, ckpt_name, dtype="auto") -> io.NodeOutput:
        from ..streamingt2v_core import load_streamingt2v

        path = models.find_streamingt2v("ckpt_name", ckpt_name)
        # 3.2 B parameters for the real model; the tiny one is far smaller but any estimate works for "auto"
        torch_dtype = resolve_dtype(dtype, 3_230_000_000)
        model = load_streamingt2v(path, device="cpu", dtype=torch_dtype)
        log.info("StreamingT2V: loaded %s (%s, %dx%d)", ckpt_name, torch_dtype, model.config.width, model.config.height)
        return io.NodeOutput(PatchedModel(model, ckpt_name))


class LoadModelScopeT2V(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return loader_schema(
            "LoadModelScopeT2V", "Load ModelScope T2V UNet",
            "Loads the ModelScope text-to-video UNet (diffusers UNet3DConditionModel) from models/diffusion_models, "
            "for the first chunk. A file inside a diffusers folder uses the folder's config.json; a single file "
            "uses <name>.json beside it or its shapes.",
            io.Combo.Input("unet_name", options=models.modelscope_choices(),
                           tooltip="e.g. text-to-video-ms-1.7b/unet/diffusion_pytorch_model.safetensors"),
            "Weight dtype. auto: what ComfyUI picks (the official stage 1 runs fp16 on the GPU).",
            ModelScopeUNet.Output("t2v_unet", display_name="t2v_unet"))

    @classmethod
    def validate_inputs(cls, unet_name, dtype="auto"):
        return models.modelscope_problem("unet_name", unet_name) or dtype_problem(dtype) or True

    @classmethod
    def execute(cls, unet_name, dtype="auto") -> io.NodeOutput:
        from ..streamingt2v_core.t2v.init_modelscope import load_modelscope_unet

        path = models.find_modelscope("unet_name", unet_name)
        unet = load_modelscope_unet(path, device="cpu", dtype=resolve_dtype(dtype, 1_410_000_000))
        return io.NodeOutput(PatchedModel(unet, unet_name))


class LoadStreamingT2VRefiner(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return loader_schema(
            "LoadStreamingT2VRefiner", "Load StreamingT2V Refiner",
            "Loads the refiner from models/streamingt2v_refiner: the MS-Vid2Vid-XL folder (damo/Video-to-Video: "
            "non_ema_0035000.pth, open_clip_pytorch_model.bin, v2-1_512-ema-pruned.ckpt; read with "
            "torch.load(weights_only=True), memory-mapped), a converted folder (unet/text_encoder/vae.safetensors), "
            "or a diffusers text-to-video folder such as zeroscope_v2_XL (refines with its own scheduler).",
            io.Combo.Input("refiner_name", options=models.refiner_choices(),
                           tooltip="A folder in models/streamingt2v_refiner."),
            "UNet weight dtype (text encoder and autoencoder stay fp32). auto: what ComfyUI picks for this device "
            "(fp32 on the CPU); the official run is fp16.",
            RefinerModel.Output("refiner", display_name="refiner"))

    @classmethod
    def validate_inputs(cls, refiner_name, dtype="auto"):
        return models.refiner_problem("refiner_name", refiner_name) or dtype_problem(dtype) or True

    @classmethod
    def execute(cls, refiner_name, dtype="auto") -> io.NodeOutput:
        from ..streamingt2v_core import load_refiner

        path = models.find_refiner("refiner_name", refiner_name)
        refiner = load_refiner(path, device="cpu", dtype=resolve_dtype(dtype, 1_411_000_000))
        log.info("StreamingT2V: loaded refiner %s (%s family, UNet %s)", refiner_name, refiner.family, refiner.dtype)
        return io.NodeOutput(PatchedModel(refiner, refiner_name))


LOAD_NODES = [LoadStreamingT2V, LoadModelScopeT2V, LoadStreamingT2VRefiner]
