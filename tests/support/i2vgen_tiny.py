"""A tiny random-weight I2VGen-XL built from diffusers' and transformers' own config classes (no downloads): the
hub folder's layout (model_index.json, unet/, vae/, text_encoder/, tokenizer/, image_encoder/, feature_extractor/,
scheduler/) with the hub's scheduler config; architecture sizes shrunk so a chunk runs in milliseconds."""
from __future__ import annotations

import json
from pathlib import Path

import torch

CANVAS = (16, 32)  # pixels; the tiny VAE has 2 levels (factor 2), so latents are 8 x 16
WIDTH = 32         # text width = image embedding width = UNet cross-attention width
# ali-vilab/i2vgen-xl scheduler/scheduler_config.json (hub revision f854a7a), the values that matter
HUB_SCHEDULER = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                     num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                     set_alpha_to_one=True, steps_offset=1, thresholding=False, timestep_spacing="leading")
_CHARS = "abcdefghijklmnopqrstuvwxyz,."


def write_tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer over single characters (no merges): enough to tell prompts apart."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in _CHARS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    from transformers import CLIPTokenizer

    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77).save_pretrained(folder)


def vocab_size() -> int:
    return 2 + 2 * len(_CHARS)


def parts(seed: int = 0) -> dict:
    """The tiny components (eval, fp32), seeded."""
    from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLUNet
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    torch.manual_seed(seed)
    unet = I2VGenXLUNet(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=WIDTH,
                        attention_head_dim=4, norm_num_groups=32,
                        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"))
    vae = AutoencoderKL(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=16, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        scaling_factor=0.18125)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=WIDTH, intermediate_size=37, num_hidden_layers=3,
                                        num_attention_heads=4, vocab_size=vocab_size(), max_position_embeddings=77,
                                        projection_dim=WIDTH, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    image = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=37,
                                                           num_hidden_layers=2, num_attention_heads=4,
                                                           image_size=32, patch_size=8, projection_dim=WIDTH))
    fe = CLIPImageProcessor(crop_size={"height": 32, "width": 32}, size={"shortest_edge": 32})
    out = {"unet": unet, "vae": vae, "text_encoder": text, "image_encoder": image, "feature_extractor": fe,
           "scheduler": DDIMScheduler(**HUB_SCHEDULER)}
    for m in ("unet", "vae", "text_encoder", "image_encoder"):
        out[m] = out[m].eval().requires_grad_(False)
    return out


def write_folder(folder: Path, seed: int = 0) -> Path:
    """The tiny model in the hub folder layout (safetensors), with a model_index.json naming I2VGenXLPipeline."""
    folder = Path(folder)
    p = parts(seed)
    for name in ("unet", "vae", "text_encoder", "image_encoder"):
        p[name].save_pretrained(folder / name, safe_serialization=True)
    p["feature_extractor"].save_pretrained(folder / "feature_extractor")
    p["scheduler"].save_pretrained(folder / "scheduler")
    write_tokenizer(folder / "tokenizer")
    index = {"_class_name": "I2VGenXLPipeline", "_diffusers_version": "0.26.1",
             "feature_extractor": ["transformers", "CLIPImageProcessor"],
             "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
             "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "I2VGenXLUNet"],
             "vae": ["diffusers", "AutoencoderKL"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def enhancer(tmp: Path, seed: int = 0):
    """The tiny folder written to `tmp` and loaded through load_refiner, on the tiny canvas."""
    from streamingt2v_core.enhancers.load import load_refiner

    model = load_refiner(write_folder(tmp, seed))
    model.canvas = CANVAS
    return model
