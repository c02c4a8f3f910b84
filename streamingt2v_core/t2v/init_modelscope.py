"""Stage 1: the first 16-frame chunk from text, with the ModelScope text-to-video UNet.

The official code runs diffusers' `TextToVideoSDPipeline` on damo-vilab/text-to-video-ms-1.7b with its
scheduler swapped for `DPMSolverMultistepScheduler.from_config(<the DDIM config>)` (dpmsolver++, order 2),
50 steps, guidance 9, 16 frames at 256x256, no negative prompt (reference 1.2). The VAE and the text
encoder are the frozen ModelScope ones, which the StreamingT2V checkpoint also holds, so they come from
the stage-2 model here and only the UNet is loaded separately.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import torch

from ..common.guidance import cfg
from ..common.unet3d import infer_unet3d_config
from ..common.weights import CheckpointError, read_json, read_weights_with_meta
from .config import OFFICIAL_UNET

# The stage-2 base UNet is ModelScope's, so its official config is the ModelScope UNet's config.
MODELSCOPE_UNET = OFFICIAL_UNET
_UNET_ARGS = set(MODELSCOPE_UNET)
DEFAULTS = {"steps": 50, "guidance": 9.0, "frames": 16, "height": 256, "width": 256}
_FIX = ("use the ModelScope text-to-video UNet (damo-vilab/text-to-video-ms-1.7b, folder unet/: "
        "diffusion_pytorch_model.safetensors with its config.json) in models/diffusion_models/")


def _weights_in_folder(folder: Path) -> Path:
    """A diffusers model folder (or a pipeline folder with unet/): its weights file."""
    if (folder / "unet").is_dir() and not (folder / "config.json").is_file():
        folder = folder / "unet"
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                 "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin"):
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: no diffusion_pytorch_model[.fp16].safetensors/.bin in this folder; {_FIX}")


def _read_config(cand: Path) -> dict:
    data = read_json(cand)
    if data is None:
        raise CheckpointError(f"{cand}: no such config file; give the UNet's config.json, or no config to read "
                              f"the architecture from the weights")
    return data


def _config_for(path: Path) -> Optional[dict]:
    """The sidecar `<stem>.json`, else a diffusers `config.json` beside the weights."""
    for cand in (path.with_suffix(".json"), path.parent / "config.json"):
        if cand.is_file():
            return _read_config(cand)
    return None


def _build_on_meta(unet_config: dict):
    from diffusers import UNet3DConditionModel

    with torch.device("meta"):
        return UNet3DConditionModel(**unet_config)


def _key_errors(expected: dict, shapes: dict) -> list[str]:
    missing = sorted(set(expected) - set(shapes))
    unknown = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if expected[k] != shapes[k])
    parts = []
    for label, keys in (("missing", missing), ("unknown", unknown), ("mis-shaped", wrong)):
        if keys:
            shown = ", ".join(f"{k} {list(shapes[k])}" if label == "mis-shaped" else k for k in keys[:8])
            parts.append(f"{label} keys: {shown}" + (f", ... ({len(keys)} in all)" if len(keys) > 8 else ""))
    return parts


def load_modelscope_unet(source, config=None, device="cpu", dtype=torch.float32):
    """The ModelScope T2V UNet (diffusers `UNet3DConditionModel`) from a single weights file (sidecar
    `<stem>.json` or a diffusers `config.json` beside it, else the architecture from the shapes) or a
    diffusers folder. Weights are read memory-mapped; missing, unknown, mis-shaped or non-float keys raise
    `CheckpointError` naming them."""
    from ..common.state_dict import BUILD_ERRORS, check_dtypes, closer_fit, module_dtypes, shapes_of

    path = Path(source).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder; {_FIX}")
    if path.is_dir():
        path = _weights_in_folder(path)
    state, _meta = read_weights_with_meta(path, _FIX)  # a bad file's message ends in this UNet's fix
    if config is None:
        config = _config_for(path)
    elif isinstance(config, (str, os.PathLike)):
        config = _read_config(Path(config))
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    base = dict(MODELSCOPE_UNET)
    base.update({k: v for k, v in (config or {}).items() if k in _UNET_ARGS})
    unet_config = infer_unet3d_config(shapes, "", base)
    try:
        unet = _build_on_meta(unet_config)
    except BUILD_ERRORS as e:
        # shapes that fit no architecture: name the keys that do not fit the configured one, if it builds
        base_shapes = shapes_of(lambda: _build_on_meta(base))
        parts = _key_errors(base_shapes, shapes) if base_shapes is not None else []
        detail = "; ".join(parts) or f"{type(e).__name__}: {e}"
        raise CheckpointError(f"{path}: its tensor shapes describe no UNet3DConditionModel ({detail}); {_FIX}") from e
    expected = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    if unet_config != base:  # report against whichever of the inferred and configured architectures fits better
        expected = closer_fit(shapes, expected, lambda: _build_on_meta(base))
    parts = _key_errors(expected, shapes)
    if parts:
        raise CheckpointError(f"{path}: not a diffusers UNet3DConditionModel state dict ({'; '.join(parts)}); {_FIX}")
    check_dtypes(state, module_dtypes(unet), path, _FIX)
    unet.load_state_dict({k: state[k].to(device=device, dtype=dtype) for k in expected}, strict=True, assign=True)
    del state
    unet.eval().requires_grad_(False)
    return unet


def make_scheduler(scheduler_config: dict):
    """DPM-Solver++ (order 2) built from the DDIM-style config, as the official stage 1 does."""
    from diffusers import DPMSolverMultistepScheduler

    config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)


def _check_unet_fits(unet, config) -> None:
    """The ModelScope UNet reads the stage-2 model's text embeddings and VAE latents: their widths must agree."""
    unet_cfg = getattr(unet, "config", None)
    if unet_cfg is None:
        return
    text_width, latent = config.text["hidden_size"], config.latent_channels
    pairs = (("cross_attention_dim", getattr(unet_cfg, "cross_attention_dim", text_width), text_width,
              "the StreamingT2V text encoder's width"),
             ("in_channels", getattr(unet_cfg, "in_channels", latent), latent, "the VAE's latent channels"))
    for key, got, want, what in pairs:
        if got != want:
            raise ValueError(f"unet: {key} {got} does not match {what} ({want}): load the ModelScope text-to-video "
                             "UNet that belongs with this StreamingT2V model")


@torch.no_grad()
def generate_first_chunk(unet, model, prompt: str, negative_prompt: str = "", steps: int = DEFAULTS["steps"],
                         guidance: float = DEFAULTS["guidance"], seed: int = 33,
                         num_frames: int = DEFAULTS["frames"], height: Optional[int] = None,
                         width: Optional[int] = None, generator: Optional[torch.Generator] = None,
                         on_step: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """Text to the first chunk: (num_frames, 3, H, W) float32 in [0, 1] on the CPU.

    `model` is the stage-2 StreamingT2V model (its text encoder, tokenizer, VAE and scheduler config).
    The initial latents come from a CPU generator seeded with `seed` (or `generator`), so a seed gives
    the same video on any device. `on_step(step, steps)` runs after each solver step (1-based)."""
    height = model.config.height if height is None else int(height)
    width = model.config.width if width is None else int(width)
    scale = model.config.vae_scale_factor
    if height < 1 or width < 1:
        raise ValueError(f"height/width {height}x{width}: both must be positive multiples of {scale} "
                         "(None: the model's own size)")
    if height % scale or width % scale:
        raise ValueError(f"height/width {height}x{width}: must be multiples of {scale} (the VAE's downscale)")
    for name, n, official in (("num_frames", num_frames, DEFAULTS["frames"]), ("steps", steps, DEFAULTS["steps"])):
        if int(n) < 1:
            raise ValueError(f"{name} is {n}; it must be at least 1 (official: {official})")
    _check_unet_fits(unet, model.config)
    device, dtype = unet.device, unet.dtype
    text = model.encode_prompt([negative_prompt, prompt]).to(device, dtype)  # [uncond, cond]
    if generator is None:
        generator = torch.Generator("cpu").manual_seed(int(seed))
    shape = (1, model.config.latent_channels, num_frames, height // scale, width // scale)
    scheduler = make_scheduler(model.config.scheduler)
    scheduler.set_timesteps(steps, device=device)
    latents = (torch.randn(shape, generator=generator, dtype=torch.float32) * scheduler.init_noise_sigma).to(device)
    b, c, f, h, w = shape
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        eps = unet(x.to(dtype), t, encoder_hidden_states=text).sample.float()
        eps_u, eps_c = eps.chunk(2)
        eps = cfg(eps_c, eps_u, guidance)
        # the pipeline steps on (B*F, C, h, w), as diffusers' TextToVideoSDPipeline does
        flat = lambda z: z.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # noqa: E731
        latents = scheduler.step(flat(eps), t, flat(latents)).prev_sample
        latents = latents.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)
        if on_step is not None:
            on_step(i + 1, len(scheduler.timesteps))
    frames = model.decode_latents(latents.to(model.dtype))[0]
    return frames.float().cpu()
