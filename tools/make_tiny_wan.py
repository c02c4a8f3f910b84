"""Write a tiny random-weight Wan 2.1 text-to-video model and a tiny Wan 2.1 VAE that core ComfyUI loads.

    python tools/make_tiny_wan.py OUT_DIR

OUT_DIR/diffusion_models/tiny_wan21_t2v.safetensors
    a Wan 2.1 t2v DiT state dict, key names and shapes as comfy/ldm/wan/model.py lays them out, with tiny
    widths: dim 128 (ComfyUI derives num_heads = dim // 128 = 1), 2 blocks, ffn 256, 16 latent channels in
    and out, patch (1, 2, 2). The text embedding keeps text_dim 4096: ComfyUI's Wan detection does not read
    it from the state dict (WanModel's default), so text_embedding.0.weight is [128, 4096]. No img_emb, so
    the detection says model_type "t2v"; out_dim 16 (head.head is [4 * 16, 128]) picks WAN21_T2V, not the
    48-channel Wan 2.2. About 1.1 M parameters, float32: ~4.4 MB.
OUT_DIR/vae/tiny_wan_vae.safetensors
    a Wan 2.1 VAE in ComfyUI's own Wan VAE layout (comfy/ldm/wan/vae.py: encoder/decoder of causal 3D
    convolutions, 16 latent channels, 4x temporal and 8x spatial compression). Chosen over the TAEHV layout
    because comfy/sd.py reads this VAE's width from the state dict (decoder.head.0.gamma) in both ComfyUI
    0.3.75 and 0.33 (0.33 also reads the image channels from encoder.conv1 / decoder.head.2, here 3), while
    TAEHV's widths are fixed (~10 M parameters) and 0.3.75 picks its latent scaling from the file's dtype.
    Width 8 (the real one is 96): ~0.92 M parameters, float32: ~3.7 MB. It encodes as well as decodes, so
    the refine workflow's VAEEncode works too.

Weights are seeded normal draws scaled by 1/sqrt(fan_in) (norm gains near 1, small biases and
modulations), so activations stay O(1) through both models: the frames are finite noise that still depends
on every input, which is all the real-server tests need.
"""
import argparse
import math
import os

import torch
from safetensors.torch import save_file

WAN_NAME = "tiny_wan21_t2v"
VAE_NAME = "tiny_wan_vae"
WAN_SEED = 20250121
VAE_SEED = 20250122

# The DiT's tiny widths; what ComfyUI fixes (text_dim, freq_dim, patch) is kept.
DIM, FFN, LAYERS, IN_CH, OUT_CH, TEXT_DIM, FREQ_DIM, PATCH = 128, 256, 2, 16, 16, 4096, 256, (1, 2, 2)
# The VAE: ComfyUI builds it with dim_mult [1, 2, 4, 4], 2 res blocks, temporal down in the last two stages.
VAE_DIM, Z_DIM, DIM_MULT, RES_BLOCKS, TEMPORAL_DOWN, IMAGE_CH = 8, 16, (1, 2, 4, 4), 2, (False, True, True), 3


def linear(sd, name, n_in, n_out):
    sd[name + ".weight"] = (n_out, n_in)
    sd[name + ".bias"] = (n_out,)


def conv(sd, name, n_in, n_out, kernel):
    sd[name + ".weight"] = (n_out, n_in, *kernel)
    sd[name + ".bias"] = (n_out,)


def wan_shapes():
    """{key: shape} of a Wan 2.1 t2v DiT (comfy/ldm/wan/model.py WanModel, model_type t2v)."""
    sd = {}
    conv(sd, "patch_embedding", IN_CH, DIM, PATCH)
    linear(sd, "text_embedding.0", TEXT_DIM, DIM)  # Sequential(Linear, GELU, Linear)
    linear(sd, "text_embedding.2", DIM, DIM)
    linear(sd, "time_embedding.0", FREQ_DIM, DIM)  # Sequential(Linear, SiLU, Linear)
    linear(sd, "time_embedding.2", DIM, DIM)
    linear(sd, "time_projection.1", DIM, 6 * DIM)  # Sequential(SiLU, Linear)
    for i in range(LAYERS):
        b = f"blocks.{i}"
        for attn in ("self_attn", "cross_attn"):  # t2v cross-attention has the self-attention's layers
            for p in ("q", "k", "v", "o"):
                linear(sd, f"{b}.{attn}.{p}", DIM, DIM)
            sd[f"{b}.{attn}.norm_q.weight"] = (DIM,)  # qk_norm: RMSNorm with a gain
            sd[f"{b}.{attn}.norm_k.weight"] = (DIM,)
        sd[f"{b}.norm3.weight"] = (DIM,)  # cross_attn_norm: an affine LayerNorm (norm1/norm2 have no weights)
        sd[f"{b}.norm3.bias"] = (DIM,)
        linear(sd, f"{b}.ffn.0", DIM, FFN)
        linear(sd, f"{b}.ffn.2", FFN, DIM)
        sd[f"{b}.modulation"] = (1, 6, DIM)
    linear(sd, "head.head", DIM, math.prod(PATCH) * OUT_CH)
    sd["head.modulation"] = (1, 2, DIM)
    return sd


def residual(sd, name, n_in, n_out):
    """ResidualBlock: residual = [RMS_norm, SiLU, conv3, RMS_norm, SiLU, Dropout, conv3], 1x1x1 shortcut."""
    sd[f"{name}.residual.0.gamma"] = (n_in, 1, 1, 1)
    conv(sd, f"{name}.residual.2", n_in, n_out, (3, 3, 3))
    sd[f"{name}.residual.3.gamma"] = (n_out, 1, 1, 1)
    conv(sd, f"{name}.residual.6", n_out, n_out, (3, 3, 3))
    if n_in != n_out:
        conv(sd, f"{name}.shortcut", n_in, n_out, (1, 1, 1))


def attention(sd, name, ch):
    """AttentionBlock: per-frame 2D RMS norm and 1x1 convolutions."""
    sd[f"{name}.norm.gamma"] = (ch, 1, 1)
    conv(sd, f"{name}.to_qkv", ch, 3 * ch, (1, 1))
    conv(sd, f"{name}.proj", ch, ch, (1, 1))


def middle(sd, name, ch):
    residual(sd, f"{name}.0", ch, ch)
    attention(sd, f"{name}.1", ch)
    residual(sd, f"{name}.2", ch, ch)


def head(sd, name, n_in, n_out):
    sd[f"{name}.0.gamma"] = (n_in, 1, 1, 1)  # [RMS_norm, SiLU, conv3]
    conv(sd, f"{name}.2", n_in, n_out, (3, 3, 3))


def vae_shapes():
    """{key: shape} of a Wan 2.1 VAE (comfy/ldm/wan/vae.py WanVAE with ComfyUI's ddconfig, width VAE_DIM)."""
    sd = {}
    # encoder: conv1, then per stage RES_BLOCKS residual blocks and (but the last) a spatial/3D downsample
    dims = [VAE_DIM * m for m in (1, *DIM_MULT)]
    conv(sd, "encoder.conv1", IMAGE_CH, dims[0], (3, 3, 3))
    k = 0
    for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(RES_BLOCKS):
            residual(sd, f"encoder.downsamples.{k}", n_in, n_out)
            n_in, k = n_out, k + 1
        if i != len(DIM_MULT) - 1:
            conv(sd, f"encoder.downsamples.{k}.resample.1", n_out, n_out, (3, 3))  # after a ZeroPad2d
            if TEMPORAL_DOWN[i]:
                conv(sd, f"encoder.downsamples.{k}.time_conv", n_out, n_out, (3, 1, 1))
            k += 1
    middle(sd, "encoder.middle", dims[-1])
    head(sd, "encoder.head", dims[-1], 2 * Z_DIM)  # mean and log-variance
    conv(sd, "conv1", 2 * Z_DIM, 2 * Z_DIM, (1, 1, 1))
    conv(sd, "conv2", Z_DIM, Z_DIM, (1, 1, 1))
    # decoder: mirrored; each upsample halves the channels, so stages after the first start at half width
    temporal_up = TEMPORAL_DOWN[::-1]
    dims = [VAE_DIM * m for m in (DIM_MULT[-1], *DIM_MULT[::-1])]
    conv(sd, "decoder.conv1", Z_DIM, dims[0], (3, 3, 3))
    middle(sd, "decoder.middle", dims[0])
    k = 0
    for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
        if i > 0:
            n_in //= 2
        for _ in range(RES_BLOCKS + 1):
            residual(sd, f"decoder.upsamples.{k}", n_in, n_out)
            n_in, k = n_out, k + 1
        if i != len(DIM_MULT) - 1:
            conv(sd, f"decoder.upsamples.{k}.resample.1", n_out, n_out // 2, (3, 3))  # after an Upsample
            if temporal_up[i]:
                conv(sd, f"decoder.upsamples.{k}.time_conv", n_out, 2 * n_out, (3, 1, 1))
            k += 1
    head(sd, "decoder.head", dims[-1], IMAGE_CH)
    return sd


def draw(shapes, seed):
    """Seeded weights: gains (norm weights/gammas) 1 + small noise, biases and modulations small, weight
    matrices and kernels N(0, 1/fan_in). Drawn on CPU in key order, so the files are the same everywhere."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(shapes):
        shape = shapes[key]
        x = torch.randn(shape, generator=g, dtype=torch.float32)
        leaf = key.rsplit(".", 1)[-1]
        is_norm = leaf == "gamma" or ".norm" in key
        if is_norm and leaf in ("gamma", "weight"):
            x = 1.0 + 0.02 * x
        elif leaf == "bias" or leaf == "modulation":
            x = 0.02 * x
        else:
            x = x / math.sqrt(math.prod(shape[1:]))
        out[key] = x.contiguous()
    return out


def write(out_dir, folder, name, shapes, seed):
    os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
    path = os.path.join(out_dir, folder, name + ".safetensors")
    save_file(draw(shapes, seed), path)
    return path


def write_wan(out_dir):
    return write(out_dir, "diffusion_models", WAN_NAME, wan_shapes(), WAN_SEED)


def write_vae(out_dir):
    return write(out_dir, "vae", VAE_NAME, vae_shapes(), VAE_SEED)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="a models folder (it gets diffusion_models/ and vae/)")
    out_dir = p.parse_args(argv).out_dir
    for path in (write_wan(out_dir), write_vae(out_dir)):
        print(path)


if __name__ == "__main__":
    main()
