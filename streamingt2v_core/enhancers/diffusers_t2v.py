"""Second enhancer family: any diffusers-format `UNet3DConditionModel` text-to-video model (e.g.
zeroscope_v2_XL) used as an SDEdit refiner, with its own diffusers scheduler fed the blended x0."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..blending.protocol import UNetEnhancer, X0Fn
from ..common.state_dict import misshaped_error
from ..common.weights import CheckpointError
from ..common.weights import read_json  # JSON beside weights, read guarded

# diffusers AutoencoderKL's default scaling_factor (SD's): the latent scale of a folder without vae/
DEFAULT_LATENT_SCALE = 0.18215
_SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from "
                            r"checkpoint, the shape in current model is torch\.Size\((\[[^\]]*\])\)")
# What to give instead of a broken diffusers folder; load_refiner, which takes every family's sources, passes
# its longer list
_FOLDER_FIX = "give a diffusers text-to-video folder (model_index.json + unet/ + scheduler/)"
_SHAPE_FIX = ("Fix: the weights do not fit the config.json beside them: download the folder again, or keep each "
              "part's config.json with the weights it came with")


class DiffusersT2VRefiner(UNetEnhancer):
    """A diffusers T2V model refining with its own scheduler; blending works on x0 as for MS-Vid2Vid."""

    family = "diffusers"

    def __init__(self, unet, scheduler, text_encoder=None, tokenizer=None, vae=None, dtype=torch.float32,
                 canvas: tuple[int, int] = (576, 1024)):
        super().__init__()
        if getattr(scheduler, "init_noise_sigma", 1.0) != 1.0:
            raise CheckpointError(f"{type(scheduler).__name__} is a sigma-space scheduler; the SDEdit refiner needs a "
                               f"VP one (DDIM, DDPM, DPMSolverMultistep, UniPC): change scheduler/scheduler_config.json")
        self.unet, self.scheduler, self.text_encoder, self.tokenizer, self.vae = unet, scheduler, text_encoder, tokenizer, vae
        self.dtype, self.canvas = dtype, canvas
        self.latent_scale = float(vae.config.scaling_factor) if vae is not None else DEFAULT_LATENT_SCALE
        self.prediction_type = scheduler.config.prediction_type
        self.alphas_cumprod = scheduler.alphas_cumprod.float().cpu()

    def check_latent_size(self, h: int, w: int) -> None:
        if h < 1 or w < 1:
            raise ValueError(f"latent size must be positive, got {h}x{w}")

    def alpha_sigma(self, t) -> tuple[float, float]:
        t, n = int(torch.as_tensor(t).reshape(-1)[0]), len(self.alphas_cumprod)
        if not 0 <= t < n:  # a negative index would wrap to the schedule's end
            raise ValueError(f"timestep {t} is outside the schedule's 0..{n - 1}")
        ac = float(self.alphas_cumprod[t])
        return ac ** 0.5, (1 - ac) ** 0.5

    def sdedit_scheduler(self, steps: int, t_start: int):
        """A fresh scheduler fed x0 (prediction_type='sample') and exactly `steps` timesteps, the first <= t_start."""
        sched = type(self.scheduler).from_config(self.scheduler.config, prediction_type="sample")
        n = steps
        while True:
            sched.set_timesteps(n)
            ts = sched.timesteps
            if int((ts <= t_start).sum()) >= steps or n >= sched.config.num_train_timesteps:
                break
            n += 1
        begin = len(ts) - min(steps, int((ts <= t_start).sum()))
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(begin)
        return sched, ts[begin:]

    def first_timestep(self, steps: int, t_start: int) -> int:
        return int(self.sdedit_scheduler(steps, t_start)[1][0])

    def sample(self, noised: torch.Tensor, x0_fn: X0Fn, steps: int, t_start: int, seed: int = 0,
               brownian_noise=None) -> torch.Tensor:
        """The model's own scheduler, fed the blended x0 (prediction_type='sample'); seed and brownian_noise
        are the MS-Vid2Vid solver's and unused here."""
        scheduler, timesteps = self.sdedit_scheduler(steps, t_start)
        x = noised
        for i, t in enumerate(timesteps):
            t_long = torch.as_tensor(t).long().reshape(1)
            x_in = scheduler.scale_model_input(x, t)
            x0 = x0_fn(x_in, i, t_long)
            x = scheduler.step(x0, t, x, return_dict=False)[0]
        return x

    @torch.no_grad()
    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        if self.text_encoder is None or self.tokenizer is None:
            raise RuntimeError("this refiner was loaded without text_encoder/ and tokenizer/")
        ids = self.tokenizer([prompt, negative_prompt], padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
        emb = self.text_encoder(ids.to(self.device))[0].float()
        return emb[:1], emb[1:]


def _from_pretrained(cls, folder: Path, fix: str, config_cls=None):
    """cls.from_pretrained(folder) (diffusers, or transformers with its `config_cls`); a size mismatch, which
    diffusers and transformers raise as a bare RuntimeError, re-raised as CheckpointError naming the file."""
    try:
        return cls.from_pretrained(folder)
    except RuntimeError as exc:
        rows, where = _misshaped_in_folder(cls, folder, config_cls)
        if not rows:  # .bin weights: torch's own message lists the mismatches
            rows = [(k, json.loads(exp), json.loads(got)) for k, got, exp in _SIZE_MISMATCH.findall(str(exc))]
        if not rows:
            raise
        raise misshaped_error(where, rows, fix) from None


def _misshaped_in_folder(cls, folder: Path, config_cls=None) -> tuple[list, Path]:
    """(key, expected, found) of the folder's safetensors tensors whose shape its config does not give."""
    from safetensors import safe_open

    try:
        with torch.device("meta"):  # the architecture alone, no memory
            model = cls(config_cls.from_pretrained(folder)) if config_cls else cls.from_config(cls.load_config(folder))
    except (OSError, ValueError, TypeError, KeyError):  # an unreadable config: the caller re-raises the original
        return [], folder
    own = model.state_dict()
    rows, files = [], set()
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                shape = f.get_slice(key).get_shape()
                if key in own and list(own[key].shape) != list(shape):
                    rows.append((key, own[key].shape, shape))
                    files.add(file)
    return rows, (files.pop() if len(files) == 1 else folder)


def is_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() or (path / "unet" / "config.json").is_file()


def load_diffusers_refiner(folder, device="cpu", dtype=torch.float32, canvas: tuple[int, int] = (576, 1024),
                           fix: str = _FOLDER_FIX):
    """A diffusers T2V folder: unet/ and scheduler/ required; text_encoder/, tokenizer/, vae/ when present.
    `fix` ends the message of a folder without them."""
    import diffusers
    from diffusers import AutoencoderKL, UNet3DConditionModel

    folder = Path(folder)
    sched_cfg = read_json(folder / "scheduler" / "scheduler_config.json")
    if not (folder / "unet" / "config.json").is_file() or sched_cfg is None:
        raise CheckpointError(f"{folder}: a diffusers refiner folder needs unet/config.json and "
                           f"scheduler/scheduler_config.json; {fix}")
    sched_cls = getattr(diffusers, sched_cfg.get("_class_name", "DDIMScheduler"), None)
    if sched_cls is None:
        raise CheckpointError(f"{folder}: unknown scheduler {sched_cfg.get('_class_name')!r} in scheduler_config.json")
    unet = _from_pretrained(UNet3DConditionModel, folder / "unet", _SHAPE_FIX).eval().requires_grad_(False)
    text = tok = vae = None
    if (folder / "text_encoder").is_dir() and (folder / "tokenizer").is_dir():
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        text = _from_pretrained(CLIPTextModel, folder / "text_encoder", _SHAPE_FIX, CLIPTextConfig)
        text = text.eval().requires_grad_(False).to(device)
        tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    if (folder / "vae").is_dir():
        vae = _from_pretrained(AutoencoderKL, folder / "vae", _SHAPE_FIX).eval().requires_grad_(False).to(device)
    return DiffusersT2VRefiner(unet.to(device=device, dtype=dtype), sched_cls.from_config(sched_cfg), text, tok, vae,
                               dtype, canvas)
