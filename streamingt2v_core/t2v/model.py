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


# -- input checks of the public calls: shapes and dtypes are free to compare; a value range costs one
# min/max pass over pixels, so it is read where pixels enter (the extend loop's steps pass cond_embedding).

def _tensor(name: str, x, layout: str, ndim: int, floating: bool = True) -> None:
    """ValueError naming `name` unless x is a tensor of `ndim` dims (floating point when `floating`)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor {layout}, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {layout}, got shape {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise ValueError(f"{name} is {x.dtype}; expected a float tensor {layout}: convert it with .float()"
                         + (" (pixels in 0..255: / 255 first)" if x.dtype == torch.uint8 else ""))


def _check_range(name: str, x: torch.Tensor, lo: float, hi: float, fix: str) -> None:
    """ValueError when x lies outside [lo, hi] by more than half the range: resampling overshoot passes,
    pixels in 0..255 do not, nor [-1, 1] where [0, 1] is expected ([0, 1] given for [-1, 1] cannot be
    told apart). Meta tensors (shape-only runs) pass."""
    if x.is_meta or x.numel() == 0:
        return
    low, high = (float(v) for v in torch.aminmax(x.detach()))
    slack = (hi - lo) / 2
    if low < lo - slack or high > hi + slack:
        raise ValueError(f"{name} values span {low:.4g}..{high:.4g}; expected pixels in [{lo:g}, {hi:g}]: {fix}")


def _batch(name: str, x: torch.Tensor, batch: int) -> None:
    """Batch 1 broadcasts over the rows of `sample`; any other batch must equal it."""
    n = x.shape[0]
    if n not in (1, batch):
        raise ValueError(f"{name} has batch {n}, sample has batch {batch}: give one row per sample row, or 1 to "
                         "share it across all rows")


def _rows(x: torch.Tensor, batch: int) -> torch.Tensor:
    """x repeated to `batch` rows when it has one (a copy, so the call equals the caller's own repeat)."""
    return x.repeat(batch, *[1] * (x.ndim - 1)) if x.shape[0] == 1 and batch > 1 else x


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
        """Token ids (B, 77) from `tokenize` -> text embeddings (B, 77, D)."""
        n = self.config.text["max_position_embeddings"]
        layout = f"(B, {n}) token ids from model.tokenize(texts)"
        _tensor("input_ids", input_ids, layout, 2, floating=False)
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids is {input_ids.dtype}; expected integer {layout}")
        if input_ids.shape[1] > n:
            raise ValueError(f"input_ids has {input_ids.shape[1]} tokens; the text encoder reads at most {n}: "
                             "use model.tokenize(texts), which pads and truncates to that length")
        return self.text_encoder(input_ids.to(self.device))

    def encode_prompt(self, texts) -> torch.Tensor:
        return self.encode_text(self.tokenize(texts))

    @torch.no_grad()
    def encode_anchor(self, image: torch.Tensor) -> torch.Tensor:
        """Anchor frames (B, 3, H, W) in [-1, 1] -> APM tokens (B, 16, D). An all-zero (mid-grey) image
        gives the unconditional tokens of classifier-free guidance."""
        channels_last = isinstance(image, torch.Tensor) and image.ndim == 4 and image.shape[-1] == 3 != image.shape[1]
        hint = ": a ComfyUI IMAGE [B, H, W, 3] becomes this with image.permute(0, 3, 1, 2)"
        _tensor("image", image, "(B, 3, H, W) pixels in [-1, 1]", 4)
        if image.shape[1] != 3:
            raise ValueError(f"image must be (B, 3, H, W) pixels in [-1, 1], got shape {tuple(image.shape)}"
                             + (hint if channels_last else ""))
        _check_range("image", image, -1.0, 1.0, "frames in [0, 1] become x * 2 - 1 (0..255: x / 127.5 - 1)")
        emb = self.image_encoder(image.to(self.device, self.dtype))
        return self.resampler(emb[:, None])

    # -- denoiser -------------------------------------------------------------------------------
    def _cond_factor(self) -> int:
        """Pixels per latent pixel of the CAM's frame encoder (one stride-2 conv per level after the first)."""
        return 2 ** (len(self.config.cond_embedding_channels) - 1)

    def _check_cond_frames(self, cond_frames, latent_hw=None) -> None:
        """(B, 8, 3, H, W) float pixels in [-1, 1], H and W `latent_hw` times the frame encoder's factor."""
        fc, f = self.config.cond_frames, self._cond_factor()
        layout = f"(B, {fc}, 3, H, W) pixels in [-1, 1]"
        _tensor("cond_frames", cond_frames, layout, 5)
        shape = tuple(cond_frames.shape)
        if shape[2] != 3:
            hint = (": frames as (B, F, H, W, 3) become this with cond_frames.permute(0, 1, 4, 2, 3)"
                    if shape[-1] == 3 else "")
            raise ValueError(f"cond_frames must be {layout}, got shape {shape}{hint}")
        if shape[1] != fc:
            raise ValueError(f"cond_frames has {shape[1]} frames; the CAM reads the last {fc} frames of the previous "
                             f"chunk: give cond_frames[:, -{fc}:] of at least {fc} frames")
        h, w = shape[-2:]
        if latent_hw is None:
            if h % f or w % f:
                raise ValueError(f"cond_frames are {w}x{h} pixels; the CAM's frame encoder needs multiples of {f}: "
                                 "resize the frames")
        elif (h, w) != (latent_hw[0] * f, latent_hw[1] * f):
            raise ValueError(f"cond_frames are {w}x{h} pixels, sample latents are {latent_hw[1]}x{latent_hw[0]}: "
                             f"the CAM needs frames of {latent_hw[1] * f}x{latent_hw[0] * f} ({f} pixels per latent "
                             "pixel), the size of the video being continued")
        _check_range("cond_frames", cond_frames, -1.0, 1.0,
                     "frames in [0, 1] become x * 2 - 1 (0..255: x / 127.5 - 1)")

    @torch.no_grad()
    def encode_cond_frames(self, cond_frames: torch.Tensor) -> torch.Tensor:
        """The CAM's conditioning-frame features of (B, 8, 3, H, W) pixels in [-1, 1], for `predict_noise`'s
        `cond_embedding`: the same for every step and guidance row of a chunk."""
        self._check_cond_frames(cond_frames)
        return self.cam.encode_cond(cond_frames.to(self.device, self.dtype))

    def _denoiser_inputs(self, sample, timestep, encoder_hidden_states, cond_frames, cond_embedding):
        """predict_noise's inputs checked against each other and the config, batch-1 conditioning and
        context repeated to the sample's batch: (timestep, encoder_hidden_states, cond_frames, cond_embedding)."""
        cfg = self.config
        c, frames, fc = cfg.unet["in_channels"], cfg.chunk_frames, cfg.cond_frames
        _tensor("sample", sample, f"(B, {c}, {frames}, h, w) latents", 5)
        b, sc, sf, h, w = sample.shape
        if sc != c:
            raise ValueError(f"sample has {sc} channels (shape {tuple(sample.shape)}); the UNet takes latents "
                             f"(B, {c}, {frames}, h, w): channels before frames")
        if sf != frames:
            raise ValueError(f"sample has {sf} frames; the model denoises chunks of {frames} latent frames "
                             f"(config.chunk_frames), the first {fc} continuing the conditioning frames")

        t = torch.as_tensor(timestep)
        if t.numel() != 1 and tuple(t.shape) != (b,):
            raise ValueError(f"timestep has shape {tuple(t.shape)}; expected one timestep (0-d) or one per sample "
                             f"row ({b},)")

        tokens, width = cfg.text_tokens + cfg.apm_tokens, cfg.context_dim
        ehs = encoder_hidden_states
        layout = f"(B, {cfg.text_tokens} + {cfg.apm_tokens}, {width}): text tokens then APM tokens"
        _tensor("encoder_hidden_states", ehs, layout, 3)
        if ehs.shape[1] != tokens:
            raise ValueError(f"encoder_hidden_states has {ehs.shape[1]} tokens; expected {tokens}, {layout} "
                             "(StreamConditioning.build makes them)")
        if ehs.shape[2] != width:
            raise ValueError(f"encoder_hidden_states is {ehs.shape[2]} wide; this model's context is {width} wide "
                             "(encode them with this model's encode_prompt and encode_anchor)")
        _batch("encoder_hidden_states", ehs, b)

        if cond_embedding is None:
            if cond_frames is None:
                raise ValueError("predict_noise needs the CAM's conditioning: give cond_frames or cond_embedding "
                                 "(from encode_cond_frames)")
            self._check_cond_frames(cond_frames, (h, w))
            _batch("cond_frames", cond_frames, b)
            cond_frames = _rows(cond_frames, b)
        else:
            c0 = cfg.unet["block_out_channels"][0]
            want = f"(B*{fc}, {c0}, {h}, {w})"
            _tensor("cond_embedding", cond_embedding, f"{want} from encode_cond_frames", 4)
            if tuple(cond_embedding.shape[1:]) != (c0, h, w):
                raise ValueError(f"cond_embedding has shape {tuple(cond_embedding.shape)}; expected {want} from "
                                 f"encode_cond_frames: {c0} channels at the sample's {w}x{h} latent size")
            rows = cond_embedding.shape[0]
            if rows % fc or rows // fc not in (1, b):
                raise ValueError(f"cond_embedding has {rows} rows; expected {fc} (one video, shared by all rows) or "
                                 f"{b * fc} ({fc} per sample row), batch-major as encode_cond_frames gives them")
            if rows == fc and b > 1:  # one video's features for every row: a copy, as the caller's repeat
                cond_embedding = cond_embedding.repeat(b, 1, 1, 1)
        return t, _rows(ehs, b), cond_frames, cond_embedding

    @torch.no_grad()
    def predict_noise(self, sample, timestep, encoder_hidden_states, cond_frames, cond_embedding=None) -> torch.Tensor:
        """One denoiser call without guidance. sample (B, 4, F, h, w); timestep 0-d (or (B,));
        encoder_hidden_states (B, 77 + 16, D) text then APM tokens; cond_frames (B, 8, 3, H, W) in [-1, 1], or
        `cond_embedding` (B*8, C, h, w) from `encode_cond_frames` (then cond_frames is not read). A batch of 1
        in encoder_hidden_states, cond_frames or cond_embedding is shared by all B rows (exactly as if
        repeated); any other mismatch is refused."""
        timestep, ehs, cond, cond_embedding = self._denoiser_inputs(sample, timestep, encoder_hidden_states,
                                                                    cond_frames, cond_embedding)
        dev, dt = self.device, self.dtype
        sample = sample.to(dev, dt)
        timestep = timestep.to(dev)
        ehs = ehs.to(dev, dt)
        cond = None if cond is None else cond.to(dev, dt)
        cam_skips, cam_mid = self.cam(sample, timestep, ehs[:, : self.config.text_tokens], cond, cond_embedding)
        return self.base_model(sample, timestep, ehs, cam_skips, cam_mid)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, slice_frames: int = 8) -> torch.Tensor:
        """(B, 4, F, h, w) -> frames (B, F, 3, H, W) in [0, 1], decoded a few frames at a time."""
        c = self.config.latent_channels
        _tensor("latents", latents, f"(B, {c}, F, h, w)", 5)
        if latents.shape[1] != c:
            raise ValueError(f"latents have shape {tuple(latents.shape)}; the VAE decodes (B, {c}, F, h, w): "
                             f"{c} channels before the frames")
        if int(slice_frames) < 1:
            raise ValueError(f"slice_frames is {slice_frames}; decode at least 1 frame per VAE call")
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


def _config_for_source(config, meta: dict, name: str) -> StreamingT2VConfig:
    """The base configuration: `config`, else the sidecar JSON of the file, else the official one; a sidecar
    or JSON file that is no StreamingT2V configuration is a CheckpointError naming it."""
    from ..common.weights import CheckpointError, sidecar_config_path

    if config is not None:
        where = str(config) if not isinstance(config, (dict, StreamingT2VConfig)) else "config argument"
    else:
        config = meta.get("config")
        where = str(sidecar_config_path(meta["path"])) if meta.get("path") else "config"
    try:
        return load_config(config)
    except (ValueError, TypeError, AttributeError, KeyError, OSError) as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{where}: not a StreamingT2V configuration for {name} ({type(e).__name__}: {e}). "
                              "Fix: give the config JSON that came with the weights (the format of "
                              "tests/data/oracle/tiny_config.json), or delete it to use the official one") from e


def _build_checked(state: dict, cfg: StreamingT2VConfig, base: StreamingT2VConfig, name: str) -> StreamingT2V:
    """The model of the inferred `cfg` on the meta device, its keys, shapes and dtypes checked against `state`.
    When `cfg` builds no model, the shapes are checked against `base`'s model instead, so that the message
    names the keys that do not fit rather than a diffusers argument error."""
    from ..common.state_dict import BUILD_ERRORS, check_dtypes, closer_fit, module_dtypes, shapes_of
    from ..common.weights import CheckpointError
    from .weights import OFFICIAL_FIX, validate_state_dict

    try:
        model = build_on_meta(cfg)
    except BUILD_ERRORS as e:  # shapes that no architecture fits
        fallback = shapes_of(lambda: build_on_meta(base))
        if fallback is not None:
            validate_state_dict(state, fallback, name, ignore=DROPPED_KEYS)  # names the keys at fault
        raise CheckpointError(f"{name}: its tensor shapes describe no StreamingT2V architecture ({e}). Fix: use the "
                              "official streaming_t2v.ckpt or a folder converted from it, with its config JSON.") from e
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if cfg != base:  # report against whichever of the inferred and base architectures fits the file better
        present = {k: tuple(v.shape) for k, v in state.items() if k not in DROPPED_KEYS}
        validate_state_dict(state, closer_fit(present, expected, lambda: build_on_meta(base)), name,
                            ignore=DROPPED_KEYS)
    validate_state_dict(state, expected, name, ignore=DROPPED_KEYS)
    check_dtypes(state, module_dtypes(model), name, f"Fix: {OFFICIAL_FIX}.")
    return model


def load_streamingt2v(source, config=None, device="cpu", dtype=torch.float32) -> StreamingT2V:
    """Loads a StreamingT2V model from the official `.ckpt`, a flat `.safetensors` with official keys, a
    folder of converted per-component files, or a state dict. The architecture comes from the tensor
    shapes; head counts and the like from `config` (dict or JSON path), a sidecar config, or the
    official defaults. Unknown, missing, mis-shaped or non-float keys raise `CheckpointError` listing them."""
    from .weights import read_state_dict_with_meta

    state, meta = read_state_dict_with_meta(source)
    name = meta.get("path") or "state dict"
    base = _config_for_source(config, meta, name)
    cfg = infer_config({k: tuple(v.shape) for k, v in state.items()}, base)
    model = _build_checked(state, cfg, base, name)
    expected = model.state_dict()

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
