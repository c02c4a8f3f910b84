"""The stage-2 StreamingT2V model: base UNet (with CAM mergers and APM mixing), CAM, APM (image encoder
and resampler), text encoder and VAE, laid out exactly like the official checkpoint's state dict."""
from __future__ import annotations

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from torch import nn

from ..common.clip import CLIP_MEAN, CLIP_STD
from .apm import APMResampler, OpenCLIPImageEncoder
from .cam import CAM
from .config import DROPPED_KEYS, StreamingT2VConfig, infer_config, load_config
from ..common.clip_bpe import CLIPTokenizer
from .text import CLIPTextEncoder
from .unet import BaseUNet

_VAE_KEYS = ("in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
             "layers_per_block", "act_fn", "latent_channels", "norm_num_groups", "sample_size", "scaling_factor")


class StreamingT2V(nn.Module):
    """Parts as in the official state dict: `base_model` (the UNet), `unet` (the CAM: its official key
    name; read it as `cam`), `resampler` and `image_encoder` (the APM), `text_encoder`, `vae`."""

    def __init__(self, config: StreamingT2VConfig):
        super().__init__()
        self.config = config
        ctx = config.text_tokens + config.apm_tokens
        self.base_model = BaseUNet(config.unet, num_context_tokens=ctx, text_tokens=config.text_tokens)
        self.unet = CAM(config.unet, config.cond_embedding_channels)  # official name of the CAM
        self.resampler = APMResampler(config.clip_vision["embed_dim"], 1280, config.apm_tokens)
        self.image_encoder = OpenCLIPImageEncoder(config.clip_vision)
        self.text_encoder = CLIPTextEncoder(config.text)
        self.vae = AutoencoderKL(**{k: v for k, v in config.vae.items() if k in _VAE_KEYS})
        self._tokenizer = None

    @property
    def cam(self) -> CAM:
        """The CAM, stored as `unet` so that the state-dict keys are the official `unet.*`."""
        return self.unet

    @property
    def device(self) -> torch.device:
        return self.base_model.conv_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base_model.conv_in.weight.dtype

    @property
    def tokenizer(self) -> CLIPTokenizer:
        if self._tokenizer is None:
            self._tokenizer = CLIPTokenizer(self.config.text["vocab_size"], self.config.text_tokens)
        return self._tokenizer

    # -- conditioning -------------------------------------------------------------------------
    def tokenize(self, texts) -> torch.Tensor:
        return self.tokenizer(texts)

    @torch.no_grad()
    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids.to(self.device))

    def encode_prompt(self, texts) -> torch.Tensor:
        return self.encode_text(self.tokenize(texts))

    @torch.no_grad()
    def encode_anchor(self, image: torch.Tensor) -> torch.Tensor:
        """Anchor frames (B, 3, H, W) in [-1, 1] -> APM tokens (B, 16, D). An all-zero (mid-grey) image
        gives the unconditional tokens of classifier-free guidance."""
        emb = self.image_encoder(image.to(self.device, self.dtype))
        return self.resampler(emb[:, None])

    # -- denoiser -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_cond_frames(self, cond_frames: torch.Tensor) -> torch.Tensor:
        """The CAM's conditioning-frame features of (B, 8, 3, H, W) pixels in [-1, 1], for `predict_noise`'s
        `cond_embedding`: the same for every step and guidance row of a chunk."""
        return self.cam.encode_cond(cond_frames.to(self.device, self.dtype))

    @torch.no_grad()
    def predict_noise(self, sample, timestep, encoder_hidden_states, cond_frames, cond_embedding=None) -> torch.Tensor:
        """One denoiser call without guidance. sample (B, 4, F, h, w); timestep 0-d (or (B,));
        encoder_hidden_states (B, 77 + 16, D) text then APM tokens; cond_frames (B, 8, 3, H, W) in [-1, 1], or
        `cond_embedding` (B*8, C, h, w) from `encode_cond_frames` (then cond_frames is not read)."""
        dev, dt = self.device, self.dtype
        sample = sample.to(dev, dt)
        timestep = torch.as_tensor(timestep, device=dev)
        ehs = encoder_hidden_states.to(dev, dt)
        cond = None if cond_frames is None else cond_frames.to(dev, dt)
        cam_skips, cam_mid = self.cam(sample, timestep, ehs[:, : self.config.text_tokens], cond, cond_embedding)
        return self.base_model(sample, timestep, ehs, cam_skips, cam_mid)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, slice_frames: int = 8) -> torch.Tensor:
        """(B, 4, F, h, w) -> frames (B, F, 3, H, W) in [0, 1], decoded a few frames at a time."""
        b, c, f, h, w = latents.shape
        z = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w) / self.vae.config.scaling_factor
        out = []
        for i in range(0, b * f, slice_frames):
            x = self.vae.decode(z[i:i + slice_frames].to(self.device, self.vae.dtype)).sample
            out.append(((x.float() + 1) / 2).clamp(0, 1))
        x = torch.cat(out)
        return x.view(b, f, *x.shape[1:])


def build_on_meta(config: StreamingT2VConfig) -> StreamingT2V:
    with torch.device("meta"):
        return StreamingT2V(config)


def official_state_dict_shapes(config=None) -> dict:
    """key -> shape of every tensor the model holds, from the modules themselves on the meta device
    (no weights allocated). `None`: the official configuration."""
    model = build_on_meta(load_config(config))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _restore_non_persistent(model: StreamingT2V, device) -> None:
    """`load_state_dict(assign=True)` leaves buffers that checkpoints never hold on the meta device."""
    emb = model.text_encoder.text_model.embeddings
    emb.register_buffer("position_ids", torch.arange(emb.position_embedding.num_embeddings, device=device)[None],
                        persistent=False)
    ie = model.image_encoder
    ie.register_buffer("mean", torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1), persistent=False)
    ie.register_buffer("std", torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1), persistent=False)
    if getattr(ie.model, "attn_mask", None) is not None:  # the deleted text transformer's causal mask
        ie.model.attn_mask = None
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"tensors left unloaded after loading: {left[:10]}")


def load_streamingt2v(source, config=None, device="cpu", dtype=torch.float32) -> StreamingT2V:
    """Loads a StreamingT2V model from the official `.ckpt`, a flat `.safetensors` with official keys, a
    folder of converted per-component files, or a state dict. The architecture comes from the tensor
    shapes; head counts and the like from `config` (dict or JSON path), a sidecar config, or the
    official defaults. Unknown, missing or mis-shaped keys raise `CheckpointError` listing them."""
    from ..common.weights import CheckpointError
    from .weights import read_state_dict_with_meta, validate_state_dict

    state, meta = read_state_dict_with_meta(source)
    name = meta.get("path") or "state dict"
    base = load_config(config if config is not None else meta.get("config"))
    cfg = infer_config({k: tuple(v.shape) for k, v in state.items()}, base)
    try:
        model = build_on_meta(cfg)
    except (ValueError, RuntimeError, KeyError, TypeError) as e:  # shapes that no architecture fits
        raise CheckpointError(f"{name}: its tensor shapes describe no StreamingT2V architecture ({e}). Fix: use the "
                              "official streaming_t2v.ckpt or a folder converted from it, with its config JSON.") from e
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    validate_state_dict(state, expected, name, ignore=DROPPED_KEYS)

    device = torch.device(device)
    loaded = {}
    for k in expected:
        t = state[k]
        loaded[k] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
    model.load_state_dict(loaded, strict=True, assign=True)
    del loaded, state
    _restore_non_persistent(model, device)
    model.eval().requires_grad_(False)
    return model
