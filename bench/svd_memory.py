"""StreamingSVD memory at the official 1024x576, 25 frames per chunk: meta-device estimates (no weights, no GPU).

    OMP_NUM_THREADS=1 python bench/svd_memory.py [--dtype fp16|bf16|fp32]

Builds ComfyUI's own SVD UNet from ComfyUI's detection on the real 3,246-key layout
(tests/data/svd/streaming_svd_manifest.tsv) and the CAM (a second UNet, input path only, plus the pack's
frame encoder) and the 13 mergers on the meta device, and counts the activation peak of one denoiser call
(streamingt2v_core.common.memory.activation_peak_bytes: fused SDPA, as CUDA runs fp16) for
  max speed: both guidance rows in one call (50 UNet rows, the CAM on 14),
  low vram : one guidance row per call (25 UNet rows, the CAM on 7),
then adds the weights resident in each plan. Weights from the manifest's parameter counts.
The temporal VAE decode (8 frames per call, official) and CLIP vision run before/after the UNet, not with it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streamingt2v_core.common.memory import activation_peak_bytes  # noqa: E402

MANIFEST = REPO / "tests" / "data" / "svd" / "streaming_svd_manifest.tsv"
BASE, CAM, ENC = "model.diffusion_model.", "controlnet.", "controlnet.controlnet_cond_embedding."
GIB = 2 ** 30


def read_manifest() -> dict:
    from streamingt2v_core.svd.weights import read_shape_manifest

    return read_shape_manifest(MANIFEST)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    args = ap.parse_args(argv)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    from tests.support.comfy_inproc import import_comfy, import_pack

    import_comfy(missing=SystemExit)
    import comfy.cli_args

    comfy.cli_args.args.use_pytorch_cross_attention = True  # SDPA, as on CUDA; no free-memory probe of meta
    import comfy.model_detection
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    cam_features = import_pack("comfy_bridge.svd_patch", missing=SystemExit).cam_features
    from streamingt2v_core.svd.cam import CAMFrameEncoder
    from streamingt2v_core.svd.merger import SkipMerger

    shapes = read_manifest()
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items() if k.startswith(BASE)}
    config = comfy.model_detection.model_config_from_unet(meta, BASE)
    unet_config = dict(config.unet_config, dtype=dtype)
    ops = comfy.ops.disable_weight_init
    unet = UNetModel(**unet_config, device="meta", operations=ops)
    cam = UNetModel(**unet_config, device="meta", operations=ops)
    with torch.device("meta"):
        encoder = CAMFrameEncoder.from_state_dict({k[len(ENC):]: torch.empty(s, device="meta")
                                                   for k, s in shapes.items() if k.startswith(ENC)}).to(dtype)
        skip_channels = [int(shapes[f"{BASE}cross_attention_merger_input_blocks.{i}.temporal_transformer.proj_in.weight"][0])
                         for i in range(12)]
        mergers = [SkipMerger(c).to(dtype) for c in skip_channels] + [SkipMerger(skip_channels[-1]).to(dtype)]

    def numel(prefixes, exclude=()):
        return sum(torch.Size(s).numel() for k, s in shapes.items() if k.startswith(prefixes) and not k.startswith(exclude))

    size = torch.empty((), dtype=dtype).element_size()
    weights = {"SVD UNet": numel(BASE, (BASE + "cross_attention_merger_",)), "CAM": numel(CAM),
               "mergers": numel(BASE + "cross_attention_merger_"),
               "CLIP vision (ViT-H)": numel("conditioner.embedders.0.open_clip.model.visual."),
               "VAE (decoder + encoders)": numel(("first_stage_model.", "conditioner.embedders.3."))}

    def denoiser_call(videos: int):
        rows, cam_rows = 25 * videos, 7 * videos
        x = torch.empty(rows, 8, 72, 128, device="meta", dtype=dtype)
        t = torch.empty(rows, device="meta", dtype=dtype)
        ctx = torch.empty(rows, 1, 1024, device="meta", dtype=dtype)
        y = torch.empty(rows, 768, device="meta", dtype=dtype)
        ind = torch.zeros(videos, 25, device="meta", dtype=dtype)
        control = torch.empty(cam_rows, 3, 576, 1024, device="meta", dtype=dtype)

        def run():
            hs, mid = cam_features(cam, x[:cam_rows], t[:cam_rows], ctx[:cam_rows, :1], y[:cam_rows],
                                   encoder(control), 7, torch.zeros(videos, 7, device="meta", dtype=dtype), {})

            def patch(h, hsp, transformer_options):
                i = transformer_options["block"][1]
                if i == 0:
                    h = mergers[12](h, mid, 25, 7)
                return h, mergers[11 - i](hsp, hs[11 - i], 25, 7)

            return unet(x, t, context=ctx, y=y, num_video_frames=25, image_only_indicator=ind,
                        transformer_options={"patches": {"output_block_patch": [patch]}})
        return run

    print(f"StreamingSVD at 1024x576 (latent 72x128), 25 frames per chunk, {args.dtype}; ComfyUI detects "
          f"{type(config).__name__}")
    print("weights: " + ", ".join(f"{n} {v / 1e6:.0f} M = {v * size / GIB:.2f} GiB" for n, v in weights.items()))
    unet_side = (weights["SVD UNet"] + weights["CAM"] + weights["mergers"]) * size
    for plan, videos in (("max speed (both guidance rows per call)", 2), ("low vram (one guidance row per call)", 1)):
        act = activation_peak_bytes(denoiser_call(videos))
        print(f"{plan:42s} activations {act / GIB:6.2f} GiB + UNet/CAM/mergers {unet_side / GIB:.2f} GiB = "
              f"{(act + unet_side) / GIB:6.2f} GiB (CLIP vision and VAE offloaded while the UNet runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
