"""I2VGen-XL (diffusers `ali-vilab/i2vgen-xl` folder) as an enhancer: diffusers' own I2VGenXLUNet, VAE and CLIP
text/vision encoders, the folder's own scheduler; the text, keyframe and guided-model calls of the official
StreamingSVD enhancer (`i2v_enhance/pipeline_i2vgen_xl.py`, facts in reference/official_streamingsvd.md s. 6)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...common.weights import CheckpointError, read_json

# The official enhancement call (i2v_enhance_interface.py): fixed prompts, 720x1280, strength 0.97 of 30 steps,
# CFG 9, the pipeline's default target fps 38, chunks of 38 overlapping by 12 with randomized blending.
OFFICIAL_PROMPT = "High Quality, HQ, detailed."
OFFICIAL_NEGATIVE_PROMPT = ("Distorted, blurry, discontinuous, Ugly, blurry, low resolution, motionless, static, "
                            "disfigured, disconnected limbs, Ugly faces, incomplete arms")
OFFICIAL_CANVAS = (720, 1280)
OFFICIAL_STEPS, OFFICIAL_STRENGTH, OFFICIAL_GUIDANCE, OFFICIAL_FPS = 30, 0.97, 9.0, 38
OFFICIAL_CHUNK, OFFICIAL_OVERLAP = 38, 12
# the hub folder's scheduler/scheduler_config.json names DDIMScheduler (v_prediction, zero-SNR, leading)
SCHEDULERS = ("DDIMScheduler",)
PARTS = ("unet", "vae", "text_encoder", "tokenizer", "image_encoder", "feature_extractor", "scheduler")
_FIX = ("give the diffusers ali-vilab/i2vgen-xl folder as downloaded (model_index.json, unet/, vae/, text_encoder/, "
        "tokenizer/, image_encoder/, feature_extractor/, scheduler/)")


def is_i2vgen_folder(path: Path) -> bool:
    """A diffusers folder whose model_index.json names I2VGenXLPipeline or whose unet/ is an I2VGenXLUNet."""
    index = read_json(path / "model_index.json") if (path / "model_index.json").is_file() else None
    unet = read_json(path / "unet" / "config.json") if (path / "unet" / "config.json").is_file() else None
    return (index or {}).get("_class_name") == "I2VGenXLPipeline" or (unet or {}).get("_class_name") == "I2VGenXLUNet"


@dataclass
class Keyframe:
    """The image conditioning of one chunk: CLIP image embedding (1, 1, D) and VAE latent (1, 4, 1, h, w)."""
    embedding: torch.Tensor
    latent: torch.Tensor


class I2VGenXLEnhancer(nn.Module):
    family = "i2vgen-xl"
    prediction_type = "v_prediction"

    def __init__(self, unet, vae, text_encoder, tokenizer, image_encoder, feature_extractor, scheduler,
                 dtype=torch.float32, canvas: tuple[int, int] = OFFICIAL_CANVAS):
        super().__init__()
        name = type(scheduler).__name__
        if name not in SCHEDULERS:
            # the official loop steps every chunk with one scheduler: only a memoryless step allows that
            raise CheckpointError(f"scheduler/scheduler_config.json names {name}; the I2VGen-XL enhancer runs "
                                  f"{', '.join(SCHEDULERS)} (what ali-vilab/i2vgen-xl ships): set _class_name to "
                                  "DDIMScheduler")
        self.unet, self.vae, self.text_encoder, self.image_encoder = unet, vae, text_encoder, image_encoder
        self.tokenizer, self.feature_extractor, self.scheduler = tokenizer, feature_extractor, scheduler
        self.dtype, self.canvas = dtype, tuple(canvas)
        self.latent_scale = float(vae.config.scaling_factor)
        self.prediction_type = scheduler.config.prediction_type

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def latent_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def fresh_scheduler(self):
        return type(self.scheduler).from_config(self.scheduler.config)

    @torch.no_grad()
    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """(context, negative_context), each (1, 77, width): the penultimate CLIP layer through the final layer norm
        (the pipeline's clip_skip=1, which the official call keeps)."""
        ids = self.tokenizer([prompt, negative_prompt], padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
        te = self.text_encoder
        # inputs on the run's device: under the low-vram plan the encoder moves there only for its forward
        hidden = te(ids.to(self.device), output_hidden_states=True).hidden_states[-2]
        # transformers 5 / 4; the norm is wherever the encoder went back to after its forward
        norm = te.final_layer_norm if hasattr(te, "final_layer_norm") else te.text_model.final_layer_norm
        emb = norm(hidden.to(norm.weight.device)).float().to(self.device)
        return emb[:1], emb[1:]

    def clip_pixels(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) in [0, 1] -> the image encoder's input (1, 3, S, S): the centre square (the pipeline's
        centre-crop to width x width), resized to the processor's crop size, normalised with its mean/std."""
        fe = self.feature_extractor
        size = fe.crop_size["height"], fe.crop_size["width"]
        h, w = image.shape[-2:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        sq = image[None, :, top:top + side, left:left + side].float()
        px = F.interpolate(sq, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        mean = torch.tensor(fe.image_mean, dtype=px.dtype).view(1, 3, 1, 1)
        std = torch.tensor(fe.image_std, dtype=px.dtype).view(1, 3, 1, 1)
        return (px - mean.to(px.device)) / std.to(px.device)

    @torch.no_grad()
    def encode_keyframe(self, image: torch.Tensor, generator: torch.Generator) -> Keyframe:
        """(3, H, W) in [0, 1] on the canvas -> its Keyframe; the VAE posterior noise comes from `generator`."""
        from ...blending.sdedit import encode_frames

        enc = self.image_encoder
        px = self.clip_pixels(image).to(device=self.device, dtype=next(enc.parameters()).dtype)
        emb = enc(px).image_embeds.float().unsqueeze(1)
        latent = encode_frames(self.vae, image[None] * 2 - 1, self.latent_scale, generator, self.device, 1)
        return Keyframe(emb.to(self.device), latent)

    @staticmethod
    def image_latents(key: Keyframe, frames: int) -> torch.Tensor:
        """(1, 4, frames, h, w): the keyframe latent, then frame k >= 1 filled with k / (frames - 1) (the
        pipeline's frame position mask)."""
        lat = key.latent
        ramp = [torch.full_like(lat, (k + 1) / (frames - 1)) for k in range(frames - 1)]
        return torch.cat([lat] + ramp, dim=2)

    def check_inputs(self, x_t, context, negative_context, key: Keyframe) -> None:
        c, width = self.unet.config.in_channels, self.unet.config.cross_attention_dim
        if not isinstance(x_t, torch.Tensor) or x_t.ndim != 5 or x_t.shape[1] != c or x_t.shape[0] != 1:
            shape = tuple(x_t.shape) if isinstance(x_t, torch.Tensor) else type(x_t).__name__
            raise ValueError(f"x_t must be one chunk latent (1, {c}, F, h, w), got {shape}")
        for name, ctx in (("context", context), ("negative_context", negative_context)):
            if not isinstance(ctx, torch.Tensor) or ctx.ndim != 3 or ctx.shape[0] != 1 or ctx.shape[2] != width:
                shape = tuple(ctx.shape) if isinstance(ctx, torch.Tensor) else type(ctx).__name__
                raise ValueError(f"{name} is {shape}; the UNet reads (1, tokens, {width}) text embeddings from this "
                                 "enhancer's encode_prompt")
        if key.latent.shape[-2:] != x_t.shape[-2:]:
            raise ValueError(f"the keyframe latent is {tuple(key.latent.shape[-2:])}, the chunk "
                             f"{tuple(x_t.shape[-2:])}: encode keyframes at the size of the video")

    @torch.no_grad()
    def guided_output(self, x_t: torch.Tensor, t, context, negative_context, key: Keyframe, guidance: float = 9.0,
                      fps: int = 38, rows_together: bool = True) -> torch.Tensor:
        """The guided model output (v) of one chunk x_t (1, 4, F, h, w) at integer t, float32.

        As the pipeline: rows [negative, positive], the negative row with a zero image embedding and the same image
        latents, fps as a micro-condition on both; u + guidance (y - u), guidance only above 1. rows_together=False
        runs the rows one call each (half the activations)."""
        self.check_inputs(x_t, context, negative_context, key)
        frames, dev, dt = x_t.shape[2], x_t.device, self.dtype
        lat = self.image_latents(key, frames).to(device=dev, dtype=dt)
        t = torch.as_tensor(t, device=dev).reshape(-1)[:1]
        x = x_t.to(dt)

        def call(rows_x, ctx, emb, n):
            return self.unet(rows_x, t.expand(n), fps=torch.full((n,), int(fps), device=dev),
                             image_latents=lat.expand(n, -1, -1, -1, -1), image_embeddings=emb.to(device=dev, dtype=dt),
                             encoder_hidden_states=ctx.to(device=dev, dtype=dt), return_dict=False)[0].float()

        emb = key.embedding.reshape(1, -1)
        if guidance <= 1.0:
            return call(x, context, emb, 1)
        zero = torch.zeros_like(emb)
        if rows_together:
            both = call(torch.cat([x, x]), torch.cat([negative_context, context]), torch.cat([zero, emb]), 2)
            u, y = both[:1], both[1:]
        else:
            u, y = call(x, negative_context, zero, 1), call(x, context, emb, 1)
        return u + guidance * (y - u)

    def meta_unet(self) -> nn.Module:
        """The UNet's architecture on the meta device in its dtype (activation estimates)."""
        from diffusers import I2VGenXLUNet

        with torch.device("meta"):
            unet = I2VGenXLUNet.from_config(self.unet.config)
        return nn.Module.to(unet, self.dtype).eval().requires_grad_(False)


def chunk_activation_bytes(model: I2VGenXLEnhancer, frames: int, rows: int = 2, feed_forward_chunk: int | None = None,
                           canvas: tuple[int, int] | None = None) -> int:
    """Peak activation bytes of one UNet call on `rows` rows of a `frames`-frame chunk on `canvas` (default the
    model's), counted on a meta copy of the UNet (no weights, no memory; common.memory.activation_peak_bytes).
    Cached per model."""
    from ...common import memory

    canvas = canvas or model.canvas
    h, w = canvas[0] // model.latent_factor, canvas[1] // model.latent_factor
    key = (int(frames), int(rows), feed_forward_chunk, h, w)
    cache = model.__dict__.setdefault("_activation_estimates", {})
    if key not in cache:
        unet = model.meta_unet()
        memory.set_feed_forward_chunking(unet, feed_forward_chunk)
        cfg, dt = unet.config, model.dtype
        with torch.device("meta"):
            x = torch.empty(rows, cfg.in_channels, int(frames), h, w, dtype=dt)
            lat = torch.empty(rows, 4, int(frames), h, w, dtype=dt)
            emb = torch.empty(rows, cfg.cross_attention_dim, dtype=dt)
            ctx = torch.empty(rows, 77, cfg.cross_attention_dim, dtype=dt)
            t, fps = torch.zeros(rows, dtype=torch.long), torch.full((rows,), 38, dtype=torch.long)
        with torch.no_grad():
            cache[key] = memory.activation_peak_bytes(
                lambda: unet(x, t, fps=fps, image_latents=lat, image_embeddings=emb, encoder_hidden_states=ctx,
                             return_dict=False)[0])
    return cache[key]


def load_i2vgen(folder, device="cpu", dtype=torch.float32,
                canvas: tuple[int, int] = OFFICIAL_CANVAS) -> I2VGenXLEnhancer:
    """The diffusers I2VGen-XL folder: every part required; UNet in `dtype`, the rest fp32, all on `device`.
    Weights are read by diffusers/transformers' own from_pretrained (safetensors in the hub folder)."""
    import diffusers
    from diffusers import AutoencoderKL, I2VGenXLUNet
    from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

    folder = Path(folder)
    missing = [p for p in PARTS if not (folder / p).is_dir()]
    if missing:
        raise CheckpointError(f"{folder}: the I2VGen-XL folder lacks {', '.join(p + '/' for p in missing)}; {_FIX}")
    sched_cfg = read_json(folder / "scheduler" / "scheduler_config.json")
    if sched_cfg is None:
        raise CheckpointError(f"{folder}: scheduler/scheduler_config.json is missing; {_FIX}")
    sched_cls = getattr(diffusers, str(sched_cfg.get("_class_name")), None)
    if sched_cls is None:
        raise CheckpointError(f"{folder}: unknown scheduler {sched_cfg.get('_class_name')!r} in scheduler_config.json")

    def part(cls, name):
        try:
            model = cls.from_pretrained(folder / name)
        except RuntimeError as exc:
            if "size mismatch" not in str(exc) and "ignore_mismatched_sizes" not in str(exc):  # diffusers, transformers
                raise
            raise CheckpointError(f"{folder / name}: the weights do not fit the config.json beside them ({exc}); "
                                  "download the folder again, keeping each part's config.json with its "
                                  "weights") from exc
        return model.eval().requires_grad_(False)

    unet = part(I2VGenXLUNet, "unet").to(device=device, dtype=dtype)
    vae = part(AutoencoderKL, "vae").to(device)
    text = part(CLIPTextModel, "text_encoder").to(device)
    image = part(CLIPVisionModelWithProjection, "image_encoder").to(device)
    return I2VGenXLEnhancer(unet, vae, text, CLIPTokenizer.from_pretrained(folder / "tokenizer"), image,
                            CLIPImageProcessor.from_pretrained(folder / "feature_extractor"),
                            sched_cls.from_config(sched_cfg), dtype, canvas)
