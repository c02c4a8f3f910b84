"""I2VGen-XL enhancement memory at the official 1280x720, 38 frames per chunk: meta-device estimates (no weights,
no GPU, no download).

    OMP_NUM_THREADS=1 python bench/i2vgen_memory.py [--dtype fp16|bf16|fp32] [--frames 38] [--video 100]

The architectures come from the hub folder's configs (ali-vilab/i2vgen-xl, as stored by the docs search: unet/ at
revision 9e9dcfd, vae/ at d41c055, text_encoder/ and image_encoder/ at 39e1979), built with diffusers' and
transformers' own classes on the meta device. Counted (streamingt2v_core.common.memory.activation_peak_bytes,
fused SDPA as CUDA runs fp16): one UNet call on a 38-frame chunk (latent 90 x 160)
  both guidance rows together (official), one row per call, and either with the feed-forwards in chunks
  (the pack's set_feed_forward_chunking, 16,384 tokens; and diffusers' enable_forward_chunking(1, dim=0)),
and one VAE encode / decode of one frame (official decode_chunk_size 1), then the plans' totals.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streamingt2v_core.common.memory import FEED_FORWARD_CHUNK, activation_peak_bytes, set_feed_forward_chunking  # noqa: E402

GIB = 2 ** 30
# ali-vilab/i2vgen-xl configs (what from_config reads; names and values as on the hub)
UNET = dict(block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=1024, in_channels=4, out_channels=4,
            layers_per_block=2, norm_num_groups=32, num_attention_heads=64, sample_size=32,
            down_block_types=["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
            up_block_types=["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3)
VAE = dict(block_out_channels=[128, 256, 512, 512], in_channels=3, out_channels=3, latent_channels=4,
           layers_per_block=2, norm_num_groups=32, sample_size=768, scaling_factor=0.18125, act_fn="silu",
           down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
TEXT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
            max_position_embeddings=77, projection_dim=1024, vocab_size=49408, hidden_act="gelu")
VISION = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
              image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu")
CANVAS = (720, 1280)


def params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def build(dtype):
    from diffusers import AutoencoderKL, I2VGenXLUNet
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.device("meta"):
        unet = I2VGenXLUNet.from_config(UNET)
        vae = AutoencoderKL.from_config(VAE)
        text = CLIPTextModel(CLIPTextConfig(**TEXT))
        vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION))
    torch.nn.Module.to(unet, dtype)
    return unet.eval(), vae.eval(), text, vision


def unet_peak(unet, frames: int, rows: int, dtype) -> int:
    h, w = CANVAS[0] // 8, CANVAS[1] // 8
    with torch.device("meta"):
        x = torch.empty(rows, 4, frames, h, w, dtype=dtype)
        lat = torch.empty(rows, 4, frames, h, w, dtype=dtype)
        emb = torch.empty(rows, 1024, dtype=dtype)
        ctx = torch.empty(rows, 77, 1024, dtype=dtype)
        t = torch.zeros(rows, dtype=torch.long)
        fps = torch.full((rows,), 38, dtype=torch.long)
    with torch.no_grad():
        return activation_peak_bytes(lambda: unet(x, t, fps=fps, image_latents=lat, image_embeddings=emb,
                                                  encoder_hidden_states=ctx, return_dict=False)[0])


def vae_peaks(vae, dtype) -> tuple[int, int]:
    torch.nn.Module.to(vae, dtype)
    with torch.device("meta"):
        px = torch.empty(1, 3, *CANVAS, dtype=dtype)
        z = torch.empty(1, 4, CANVAS[0] // 8, CANVAS[1] // 8, dtype=dtype)
    with torch.no_grad():
        enc = activation_peak_bytes(lambda: vae.encode(px).latent_dist.mean)
        dec = activation_peak_bytes(lambda: vae.decode(z).sample)
    return enc, dec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--frames", type=int, default=38, help="frames per chunk (official 38)")
    ap.add_argument("--video", type=int, default=100, help="video length for the whole-video state (official 100)")
    args = ap.parse_args(argv)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    size = torch.finfo(dtype).bits // 8
    unet, vae, text, vision = build(dtype)
    n_unet, n_vae, n_text, n_vision = params(unet), params(vae), params(text), params(vision)
    w_unet = n_unet * size
    print(f"weights ({args.dtype} UNet; the others fp32 as the pack loads them, fp16 in brackets):")
    print(f"  UNet {n_unet / 1e6:,.0f} M = {w_unet / GIB:.2f} GiB")
    for name, n in (("VAE", n_vae), ("CLIP text (ViT-H text tower)", n_text), ("CLIP vision ViT-H/14", n_vision)):
        print(f"  {name} {n / 1e6:,.0f} M = {4 * n / GIB:.2f} GiB ({2 * n / GIB:.2f})")

    rows = {}
    rows["both rows"] = unet_peak(unet, args.frames, 2, dtype)
    rows["one row"] = unet_peak(unet, args.frames, 1, dtype)
    set_feed_forward_chunking(unet, FEED_FORWARD_CHUNK)
    rows["both rows, ff chunks"] = unet_peak(unet, args.frames, 2, dtype)
    rows["one row, ff chunks"] = unet_peak(unet, args.frames, 1, dtype)
    set_feed_forward_chunking(unet, None)
    unet.enable_forward_chunking(chunk_size=1, dim=0)
    rows["one row, diffusers enable_forward_chunking(1, dim=0)"] = unet_peak(unet, args.frames, 1, dtype)
    unet.disable_forward_chunking()
    print(f"UNet activations, one chunk of {args.frames} frames at {CANVAS[1]}x{CANVAS[0]} (latent 90x160):")
    for k, v in rows.items():
        print(f"  {k}: {v / GIB:.2f} GiB")
    enc32, dec32 = vae_peaks(vae, torch.float32)
    enc16, dec16 = vae_peaks(vae, torch.float16)
    print(f"VAE one frame: encode {enc32 / GIB:.2f} GiB fp32 ({enc16 / GIB:.2f} fp16), "
          f"decode {dec32 / GIB:.2f} GiB fp32 ({dec16 / GIB:.2f} fp16)")
    # whole-video state in enhance_latents: the clean latent, x, the per-chunk stepped latents and the stitched
    # copy (about 4 fp32 latents of the video), one chunk's split, and the per-chunk image latents
    latent = 4 * (CANVAS[0] // 8) * (CANVAS[1] // 8) * 4
    state = 4 * args.video * latent + 2 * args.frames * latent
    print(f"whole-video state for {args.video} frames: {state / GIB:.2f} GiB ({latent / 2 ** 20:.2f} MiB per latent frame)")
    vae32 = 4 * n_vae
    official = w_unet + 2 * n_vae + 2 * n_text + 2 * n_vision + rows["both rows"] + state
    low = w_unet + vae32 + rows["one row, ff chunks"] + state
    print(f"official (everything resident fp16, both rows together): {official / GIB:.2f} GiB")
    print(f"low vram (text and image encoders offloaded between uses, VAE fp32 resident one frame per call, "
          f"one row per call, ff chunks): {low / GIB:.2f} GiB while the UNet runs; "
          f"VAE decode peak {(w_unet + vae32 + dec32 + state) / GIB:.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
