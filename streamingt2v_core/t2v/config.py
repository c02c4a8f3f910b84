"""Architecture of a StreamingT2V model: the official defaults, the oracle's JSON format, and what a
checkpoint's tensor shapes tell.

Shapes fix almost everything (channel widths, layer counts, vocabulary). They cannot tell head counts,
which come from the official defaults or from a user config.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field

from ..common.unet3d import count_indices, infer_unet3d_config, shape_dim

# The ModelScope text-to-video UNet3D (damo-vilab/text-to-video-ms-1.7b unet/config.json); the CAM is a
# copy of its encoder. `attention_head_dim` is, in diffusers' legacy naming, the number of heads.
OFFICIAL_UNET = {
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
    "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 1024,
    "attention_head_dim": 64,
    "sample_size": 32,
}

OFFICIAL_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 256,
    "scaling_factor": 0.18215,
}

OFFICIAL_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 512,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}

# OpenCLIP ViT-H-14; only the visual tower runs (the text-side tensors kept in the checkpoint are inert).
OFFICIAL_CLIP_VISION = {
    "embed_dim": 1024,
    "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24},
}

# Non-persistent buffers (transformers >= 4.31): never needed from a checkpoint, rebuilt after loading;
# older checkpoints may still carry them, and the loader and the converter drop them.
DROPPED_KEYS = ("text_encoder.text_model.embeddings.position_ids",)

# DDIM as the official stage 2 uses it (ModelScope's scheduler config).
OFFICIAL_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "clip_sample": False,
}


@dataclass
class StreamingT2VConfig:
    unet: dict = field(default_factory=lambda: copy.deepcopy(OFFICIAL_UNET))
    cond_embedding_channels: list = field(default_factory=lambda: [32, 96, 256, 512])
    vae: dict = field(default_factory=lambda: copy.deepcopy(OFFICIAL_VAE))
    text: dict = field(default_factory=lambda: copy.deepcopy(OFFICIAL_TEXT))
    clip_vision: dict = field(default_factory=lambda: copy.deepcopy(OFFICIAL_CLIP_VISION))
    scheduler: dict = field(default_factory=lambda: copy.deepcopy(OFFICIAL_SCHEDULER))
    # "clip-bpe": the real CLIP vocabulary (49,408 tokens); "bytes": byte-level CLIP BPE without merges
    # (the oracle's tiny tokenizer, 514 tokens).
    tokenizer: str = "clip-bpe"
    apm_tokens: int = 16  # image tokens appended to the 77 text tokens
    text_tokens: int = 77
    chunk_frames: int = 16
    cond_frames: int = 8  # CAM: last frames of the previous chunk / first latent frames of this one
    height: int = 256
    width: int = 256

    @property
    def new_frames_per_chunk(self) -> int:
        """Frames each chunk adds: the first `cond_frames` of its `chunk_frames` regenerate the previous
        chunk's tail (paper section 3.1)."""
        return self.chunk_frames - self.cond_frames

    @property
    def min_stream_frames(self) -> int:
        """The fewest frames a stream can continue from: the CAM reads the last `cond_frames`."""
        return self.cond_frames

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def latent_channels(self) -> int:
        return self.vae["latent_channels"]

    @property
    def context_dim(self) -> int:
        return self.unet["cross_attention_dim"]

    def to_dict(self) -> dict:
        return {
            "unet_config": self.unet,
            "unet_params_overrides": {"conditioning_embedding_out_channels": self.cond_embedding_channels},
            "vae_config": self.vae,
            "text_encoder_config": self.text,
            "open_clip_image_encoder": {"config": self.clip_vision},
            "scheduler_config": self.scheduler,
            "tokenizer": {"kind": self.tokenizer},
            "inference_params_overrides": {"width": self.width, "height": self.height},
        }


def _pick(d: dict, prefix: str):
    for k, v in d.items():
        if k.startswith(prefix):
            return v
    return None


def config_from_dict(d: dict) -> StreamingT2VConfig:
    """Reads the oracle's `tiny_config.json` format (also what `to_dict` writes)."""
    cfg = StreamingT2VConfig()
    unet = _pick(d, "unet_config")
    if unet:
        cfg.unet.update({k: v for k, v in unet.items() if not k.startswith("_")})
    over = d.get("unet_params_overrides") or {}
    if "conditioning_embedding_out_channels" in over:
        cfg.cond_embedding_channels = list(over["conditioning_embedding_out_channels"])
    if d.get("vae_config"):
        cfg.vae.update({k: v for k, v in d["vae_config"].items() if not k.startswith("_")})
    if d.get("text_encoder_config"):
        keep = set(OFFICIAL_TEXT)
        cfg.text.update({k: v for k, v in d["text_encoder_config"].items() if k in keep})
    clip = d.get("open_clip_image_encoder")
    if clip and clip.get("config"):
        cfg.clip_vision = copy.deepcopy(clip["config"])
    sched = _pick(d, "scheduler_config")
    if sched:
        cfg.scheduler.update({k: v for k, v in sched.items() if k in OFFICIAL_SCHEDULER})
    tok = d.get("tokenizer") or {}
    if tok.get("kind"):
        cfg.tokenizer = tok["kind"]
    elif "byte-level" in str(tok.get("vocab", "")):
        cfg.tokenizer = "bytes"
    size = d.get("inference_params_overrides") or {}
    cfg.width = int(size.get("width", cfg.width))
    cfg.height = int(size.get("height", cfg.height))
    return cfg


def load_config(config) -> StreamingT2VConfig:
    """`config`: None (official), a StreamingT2VConfig, a dict in the oracle format, or a JSON path."""
    if config is None:
        return StreamingT2VConfig()
    if isinstance(config, StreamingT2VConfig):
        return copy.deepcopy(config)
    if isinstance(config, (str, os.PathLike)):
        with open(config) as f:
            config = json.load(f)
    if not isinstance(config, dict):
        raise TypeError(f"config must be None, a dict or a path to a JSON file, not {type(config).__name__}")
    return config_from_dict(config)


def infer_config(shapes: dict, base: StreamingT2VConfig | None = None) -> StreamingT2VConfig:
    """Fills in everything the tensor shapes of an official-layout state dict determine.

    `shapes` maps full keys (with `base_model.` etc.) to shapes. What shapes cannot say (head counts,
    resolution, scheduler) stays as in `base`. Missing keys, and keys whose shape has the wrong number of
    dims (a 1-element or re-shaped tensor), leave the base value: the key check that follows names them.
    """
    cfg = copy.deepcopy(base) if base is not None else StreamingT2VConfig()
    s = {k: tuple(v) for k, v in shapes.items()}

    def dim(key: str, ndim: int, index: int):
        return shape_dim(s, key, ndim, index)

    cfg.unet = infer_unet3d_config(s, "base_model.", cfg.unet)  # the CAM is a copy of its encoder

    n_cond = count_indices(s, r"unet\.controlnet_cond_embedding\.blocks\.(\d+)\.")
    if n_cond:
        chans = [dim("unet.controlnet_cond_embedding.conv_in.weight", 4, 0)]
        chans += [dim(f"unet.controlnet_cond_embedding.blocks.{i}.weight", 4, 0) for i in range(1, n_cond, 2)]
        if None not in chans:
            cfg.cond_embedding_channels = chans

    n_vae = count_indices(s, r"vae\.encoder\.down_blocks\.(\d+)\.")
    if n_vae:
        chans = [dim(f"vae.encoder.down_blocks.{i}.resnets.0.conv2.weight", 4, 0) for i in range(n_vae)]
        if None not in chans:
            cfg.vae["block_out_channels"] = chans
            cfg.vae["down_block_types"] = ["DownEncoderBlock2D"] * n_vae
            cfg.vae["up_block_types"] = ["UpDecoderBlock2D"] * n_vae
        layers = count_indices(s, r"vae\.encoder\.down_blocks\.0\.resnets\.(\d+)\.")
        if layers:
            cfg.vae["layers_per_block"] = layers
        w = dim("vae.quant_conv.weight", 4, 0)  # 2 * latent channels (mean and log-variance)
        if w is not None and w % 2 == 0:
            cfg.vae["latent_channels"] = w // 2

    key = "text_encoder.text_model.embeddings.token_embedding.weight"
    vocab, hidden = dim(key, 2, 0), dim(key, 2, 1)
    if vocab is not None:
        cfg.text["vocab_size"], cfg.text["hidden_size"] = vocab, hidden
        cfg.tokenizer = "clip-bpe" if vocab >= 49408 else "bytes"
    w = dim("text_encoder.text_model.embeddings.position_embedding.weight", 2, 0)
    if w is not None:
        cfg.text["max_position_embeddings"] = w
    w = dim("text_encoder.text_model.encoder.layers.0.mlp.fc1.weight", 2, 0)
    if w is not None:
        cfg.text["intermediate_size"] = w
    n = count_indices(s, r"text_encoder\.text_model\.encoder\.layers\.(\d+)\.")
    if n:
        cfg.text["num_hidden_layers"] = n

    vis = cfg.clip_vision["vision_cfg"]
    key = "image_encoder.model.visual.conv1.weight"  # (width, 3, patch, patch)
    width, patch = dim(key, 4, 0), dim(key, 4, 2)
    if width is not None:
        vis["width"], vis["patch_size"] = width, patch
        pos = dim("image_encoder.model.visual.positional_embedding", 2, 0)  # grid * grid + 1 class token
        if pos is not None and pos > 1:
            vis["image_size"] = round((pos - 1) ** 0.5) * patch
    n = count_indices(s, r"image_encoder\.model\.visual\.transformer\.resblocks\.(\d+)\.")
    if n:
        vis["layers"] = n
    key = "image_encoder.model.visual.transformer.resblocks.0.mlp.c_fc.weight"
    if dim(key, 2, 0) is not None:
        vis["mlp_ratio"] = dim(key, 2, 0) / dim(key, 2, 1)
    w = dim("image_encoder.model.visual.proj", 2, 1)
    if w is not None:
        cfg.clip_vision["embed_dim"] = w
    txt = cfg.clip_vision["text_cfg"]
    key = "image_encoder.model.token_embedding.weight"
    if dim(key, 2, 0) is not None:
        txt["vocab_size"], txt["width"] = dim(key, 2, 0), dim(key, 2, 1)
    w = dim("image_encoder.model.positional_embedding", 2, 0)
    if w is not None:
        txt["context_length"] = w
    return cfg
