"""The oracle's tiny StreamingSVD checkpoint as ComfyUI objects (test only): its SVD MODEL, first-stage VAE and
CLIP vision tower, which ComfyUI's own loaders refuse at the tiny widths (the real file loads in core's
ImageOnlyCheckpointLoader: tests/comfy/test_svd_layout.py).

* MODEL: load_state_dict_guess_config's steps with the model config SVD_img2vid named (context_dim 128 and
  channel_mult 1,2,1,1 match no supported model);
* VAE: comfy.sd.VAE's detection hard-codes ch 128, so a comfy.sd.VAE is built by config and then holds
  ComfyUI's AutoencodingEngine with its temporal VideoDecoder at the tiny widths;
* CLIP_VISION: comfy.clip_vision.ClipVisionModel with the tiny OpenCLIP tower's config (2 layers: the loader's
  detection knows 24/32/48), fed the checkpoint's tower through ComfyUI's own key conversion.
"""
from __future__ import annotations

import json
import os
import tempfile

# the tiny VAEs (first stage and conditioner encoder): the official ddconfig at ch 32
DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
            "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
CLIP_PREFIX = "conditioner.embedders.0.open_clip.model.visual."
# the oracle's ViT-Tiny-SVD-Oracle tower: 224 px, patch 32, width 64, 2 layers, head width 16, embed 128
CLIP_CONFIG = {"attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "gelu", "hidden_size": 64, "image_size": 224,
               "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 256, "layer_norm_eps": 1e-5,
               "model_type": "clip_vision_model", "num_attention_heads": 4, "num_channels": 3,
               "num_hidden_layers": 2, "patch_size": 32, "projection_dim": 128}


def _tensors(path, prefix: str) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


def load_svd_model(path):
    """The SVD MODEL of a checkpoint, as comfy.sd.load_state_dict_guess_config builds it, with the model config
    SVD_img2vid given instead of detected."""
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    import comfy.utils

    sd = comfy.utils.load_torch_file(str(path))
    prefix = comfy.model_detection.unet_prefix_from_state_dict(sd)
    assert prefix == "model.diffusion_model."
    config = comfy.supported_models.SVD_img2vid(comfy.model_detection.detect_unet_config(sd, prefix))
    params = comfy.utils.calculate_parameters(sd, prefix)
    load_device = mm.get_torch_device()
    dtype = mm.unet_dtype(model_params=params, supported_dtypes=list(config.supported_inference_dtypes))
    config.set_inference_dtype(dtype, mm.unet_manual_cast(dtype, load_device, config.supported_inference_dtypes))
    model = config.get_model(sd, prefix, device=mm.unet_inital_load_device(params, dtype))
    model.load_model_weights(sd, prefix)
    del sd
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device())


def load_first_stage_vae(path):
    """The checkpoint's first stage (temporal decoder) as a comfy.sd.VAE."""
    import comfy.model_patcher
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    first = _tensors(path, "first_stage_model.")
    engine = AutoencodingEngine(
        regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
        encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": DDCONFIG},
        decoder_config={"target": "comfy.ldm.modules.temporal_ae.VideoDecoder",
                        "params": dict(DDCONFIG, video_kernel_size=[3, 1, 1], alpha=0.0)}).eval()
    engine.load_state_dict(first, strict=True)
    # built by config (a plain AutoencoderKL from the first stage's encoder half), then holding the temporal engine
    encoder_only = {k: v for k, v in first.items() if k.startswith(("encoder.", "quant_conv."))}
    vae = comfy.sd.VAE(sd=encoder_only, config={"params": {"embed_dim": 4, "ddconfig": DDCONFIG}})
    vae.first_stage_model = engine.to(vae.vae_dtype)
    vae.patcher = comfy.model_patcher.ModelPatcher(engine, load_device=vae.device,
                                                   offload_device=vae.patcher.offload_device)
    vae.size = None
    return vae


def load_clip_vision(path):
    """The checkpoint's tiny OpenCLIP image tower as a ComfyUI CLIP_VISION (ClipVisionModel)."""
    import comfy.clip_vision

    sd = {CLIP_PREFIX + k: v for k, v in _tensors(path, CLIP_PREFIX).items()}
    sd = comfy.clip_vision.convert_to_transformers(sd, CLIP_PREFIX)
    fd, config_path = tempfile.mkstemp(suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(CLIP_CONFIG, f)
        clip = comfy.clip_vision.ClipVisionModel(config_path)
    finally:
        os.unlink(config_path)
    missing, unexpected = clip.load_sd(sd)
    if missing or unexpected:
        raise ValueError(f"tiny CLIP vision: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return clip


class TinySVDCheckpointLoader:
    """ImageOnlyCheckpointLoader's outputs for the tiny checkpoint (MODEL, CLIP_VISION, VAE)."""
    CATEGORY = "testing"
    RETURN_TYPES = ("MODEL", "CLIP_VISION", "VAE")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        return {"required": {"ckpt_name": (folder_paths.get_filename_list("checkpoints"),)}}

    def load(self, ckpt_name):
        import folder_paths

        path = folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)
        return load_svd_model(path), load_clip_vision(path), load_first_stage_vae(path)
