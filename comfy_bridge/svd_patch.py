"""StreamingSVD's conditional attention module (CAM) and skip mergers as a patch on ComfyUI's own SVD MODEL.

The base UNet stays ComfyUI's (`SVD_img2vid`, openaimodel.UNetModel); nothing of core is copied or patched:
* the CAM is a second UNetModel of the base model's unet_config (input blocks + middle block; the checkpoint
  has no output path for it) plus the control-frame encoder of streamingt2v_core.svd.cam; it runs inside a
  `WrappersMP.DIFFUSION_MODEL` wrapper, which sees exactly the UNet inputs (c_in*x (+) concat, 0.25 ln sigma,
  context, y), on frames [:7] of every 25-frame video of the batch, and stashes its 12 input-block outputs
  and its middle-block output in transformer_options;
* an `output_block_patch` replaces skip 11-i by merger 11-i(skip, CAM feature) at output block i, and at
  i = 0 also the middle-block output by the mid merger: the official UNet merges all skips after an
  unmodified input path, and nothing but additive ControlNet residuals happens between the middle block and
  output block 0, so this computes the same.
The CAM and the mergers are ModelPatchers registered as additional models of the patched MODEL, so ComfyUI
loads and offloads them together with the UNet.
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass

import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel, forward_timestep_embed
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding
from torch import nn

from ..streamingt2v_core.svd import config
from ..streamingt2v_core.svd.cam import CAMFrameEncoder
from ..streamingt2v_core.svd.merger import load_mergers

WRAPPER_KEY = "StreamingSVD_CAM"
MODELS_KEY = "StreamingSVD"
FEATURES_KEY = "streaming_svd_cam"  # transformer_options entry: the CAM features of the current UNet call
_CAM_HAS_NO = ("output_blocks.", "out.")  # the CAM copy of the UNet stops after the middle block
# transformer_options entries that belong to the base UNet's blocks, not to the CAM's
_BASE_ONLY = ("patches", "patches_replace", FEATURES_KEY)


class StreamingCAM(nn.Module):
    """The CAM: a UNetModel without output path, and the encoder of the control frames."""

    def __init__(self, unet: UNetModel, frame_encoder: nn.Module):
        super().__init__()
        self.unet = unet
        self.frame_encoder = frame_encoder


class SkipMergers(nn.Module):
    """The 12 skip mergers (index = input block whose output they merge) and the middle-block merger."""

    def __init__(self, mergers: dict):
        super().__init__()
        self.skips = nn.ModuleList([mergers[i] for i in range(len(mergers) - 1)])
        self.mid = mergers["mid"]


def _dtypes(model) -> tuple[torch.dtype, torch.dtype | None]:
    """(weight dtype, manual-cast compute dtype) for the CAM and mergers: the base UNet's, except that fp8
    base weights (scaled per tensor in their checkpoints) give the compute dtype: our weights are plain."""
    base = model.model
    weight, compute = base.get_dtype(), base.manual_cast_dtype
    if weight.itemsize == 1:
        weight = compute or torch.float16
    return weight, (None if compute == weight else compute)


def _patcher(model, module: nn.Module) -> comfy.model_patcher.ModelPatcher:
    return comfy.model_patcher.ModelPatcher(module, load_device=model.load_device, offload_device=model.offload_device)


def build_cam(model, parts) -> comfy.model_patcher.ModelPatcher:
    """The CAM of `parts` (streamingt2v_core.svd.weights.StreamingSVDParts) for the SVD MODEL `model`, as a
    ModelPatcher over a StreamingCAM on the model's offload device, in the model's dtype."""
    weight, compute = _dtypes(model)
    unet_config = dict(model.model.model_config.unet_config, dtype=weight)
    # built on meta and filled with assign=True: the real CAM is 2.7 GB in fp32, never held twice
    unet = UNetModel(**unet_config, device="meta", operations=comfy.ops.pick_operations(weight, compute))
    own, given = set(unet.state_dict()), set(parts.cam_unet)
    missing = sorted(k for k in own - given if not k.startswith(_CAM_HAS_NO))
    unexpected = sorted(given - own)
    if missing or unexpected:
        raise ValueError(f"the checkpoint's CAM (controlnet.*) does not fit this SVD model's UNet config: "
                         f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                         f"(e.g. {unexpected[:3]}); is the MODEL the StreamingSVD checkpoint's SVD?")
    unet.output_blocks = nn.ModuleList()  # unused by the CAM and absent from the checkpoint
    unet.out = nn.Identity()
    unet.load_state_dict({k: v.to(weight) for k, v in parts.cam_unet.items()}, strict=True, assign=True)
    left = [n for n, t in list(unet.named_parameters()) + list(unet.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"CAM tensors without values after loading: {left[:5]}")
    encoder = CAMFrameEncoder.from_state_dict(parts.frame_encoder).to(dtype=weight)
    return _patcher(model, StreamingCAM(unet, encoder).to(model.offload_device))


def build_mergers(model, parts) -> comfy.model_patcher.ModelPatcher:
    """The skip mergers of `parts` as a ModelPatcher over SkipMergers, in the model's dtype."""
    return _merger_patcher(model, load_mergers(parts.mergers))


class ConcatEncoder(nn.Module):
    """The conditioner's VAE encoder (official `AutoencoderKLModeOnly`): pixels [B,3,H,W] in [-1,1] to the
    mode (mean) of the posterior, unscaled, [B, 4, H/8, W/8]. ComfyUI's Encoder block with the widths the
    weights have; no decoder (the official never decodes with it)."""

    def __init__(self, state_dict: dict):
        super().__init__()
        from comfy.ldm.modules.diffusionmodules.model import Encoder

        def shape(key):
            if key not in state_dict:
                raise ValueError(f"the conditioner encoder has no {key}")
            return tuple(state_dict[key].shape)

        levels = 1 + max(int(k.split(".")[2]) for k in state_dict if k.startswith("encoder.down."))
        blocks = 1 + max(int(k.split(".")[4]) for k in state_dict if k.startswith("encoder.down.0.block."))
        ch, in_channels = shape("encoder.conv_in.weight")[:2]
        if any(".attn." in k for k in state_dict if k.startswith("encoder.down.")):
            raise ValueError("the conditioner encoder has attention in its down blocks: not SVD's VAE encoder")
        self.encoder = Encoder(ch=ch, out_ch=3, ch_mult=[shape(f"encoder.down.{i}.block.0.conv2.weight")[0] // ch
                                                         for i in range(levels)],
                               num_res_blocks=blocks, attn_resolutions=[], in_channels=in_channels, resolution=256,
                               z_channels=shape("encoder.conv_out.weight")[0] // 2, double_z=True)
        moments = shape("quant_conv.weight")[0]
        self.quant_conv = comfy.ops.disable_weight_init.Conv2d(moments, moments, 1)
        self.load_state_dict(state_dict, strict=True)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        moments = self.quant_conv(self.encoder(pixels))
        return moments.chunk(2, dim=1)[0]


def build_concat_encoder(model, parts) -> comfy.model_patcher.ModelPatcher:
    """The conditioner's VAE encoder of `parts` as a ModelPatcher, in fp32 (the official runs it with autocast
    off), on the SVD MODEL's devices. A state dict that does not fit the VAE encoder raises ValueError."""
    try:
        module = ConcatEncoder({k: v.float() for k, v in parts.concat_encoder.items()}).eval()
    except RuntimeError as exc:  # load_state_dict: missing/unexpected/mis-shaped
        raise ValueError(f"the conditioner encoder (conditioner.embedders.3.encoder.*) does not fit SVD's VAE "
                         f"encoder: {exc}") from exc
    return _patcher(model, module.to(model.offload_device))


@dataclass(frozen=True)
class StreamingSVDModules:
    """StreamingSVD's modules for one SVD MODEL, as ModelPatchers."""
    cam: comfy.model_patcher.ModelPatcher
    mergers: comfy.model_patcher.ModelPatcher
    concat_encoder: comfy.model_patcher.ModelPatcher


# SVD weights (BaseModel) -> (parts, modules) last built for them: a queue of prompts reuses the same patchers
# (ComfyUI keeps them loaded between prompts); a new CAM file for the same model replaces the entry.
_BUILT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def build_modules(model, parts) -> StreamingSVDModules:
    """The CAM, mergers and concat encoder of `parts` for the SVD MODEL `model` (built once per pair).
    ValueError when they do not fit the model."""
    last = _BUILT.get(model.model)
    if last is not None and last[0] is parts:
        return last[1]
    modules = StreamingSVDModules(build_cam(model, parts), build_mergers(model, parts),
                                  build_concat_encoder(model, parts))
    _BUILT[model.model] = (parts, modules)
    return modules


def _merger_patcher(model, mergers: dict) -> comfy.model_patcher.ModelPatcher:
    weight, _ = _dtypes(model)
    return _patcher(model, SkipMergers(mergers).to(model.offload_device, weight))


def cam_features(unet: UNetModel, x, timesteps, context, y, cond_embedding, num_video_frames: int,
                 image_only_indicator, transformer_options: dict) -> tuple[list, torch.Tensor]:
    """The UNet's input path with the UNet's own modules: (the 12 input-block outputs, the middle-block
    output), the encoded control frames added after input block 0 (the CAM's addition merger)."""
    emb = unet.time_embed(timestep_embedding(timesteps, unet.model_channels, repeat_only=False).to(x.dtype))
    if unet.num_classes is not None:
        emb = emb + unet.label_emb(y)
    kw = dict(num_video_frames=num_video_frames, image_only_indicator=image_only_indicator)
    hs, h = [], x
    for i, block in enumerate(unet.input_blocks):
        h = forward_timestep_embed(block, h, emb, context, transformer_options, **kw)
        if i == 0:
            h = h + cond_embedding
        hs.append(h)
    h = forward_timestep_embed(unet.middle_block, h, emb, context, transformer_options, **kw)
    return hs, h


@contextlib.contextmanager
def _on(module: nn.Module, device: torch.device):
    """`module` on `device` for the duration. ComfyUI's partial (lowvram) loading leaves modules without
    comfy.ops cast support (the pure-torch encoder and mergers) on the offload device; they come for the call
    and go back, so the loader's bookkeeping stays true."""
    home = next(module.parameters()).device
    if home == device:
        yield module
        return
    module.to(device)
    try:
        yield module
    finally:
        module.to(home)


def _param_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


class _StreamingSVDHooks:
    """The DIFFUSION_MODEL wrapper and the output-block patch of one streaming_svd_patch call."""

    def __init__(self, cam: StreamingCAM, mergers: SkipMergers, control_frames: torch.Tensor):
        self.cam, self.mergers, self.control_frames = cam, mergers, control_frames
        self._encoding = None  # (device, dtype, encoded control frames): the frames are fixed per patch

    def __deepcopy__(self, memo):
        # ModelPatcher.clone deep-copies model_options (where the output-block patch lives): share, not copy,
        # the CAM and merger weights
        return self

    def encoding(self, device, dtype) -> torch.Tensor:
        if self._encoding is None or self._encoding[:2] != (device, dtype):
            enc = self.cam.frame_encoder
            with _on(enc, device), torch.no_grad():
                out = enc(self.control_frames.to(device, _param_dtype(enc))).to(dtype)
            self._encoding = (device, dtype, out)
        return self._encoding[2]

    def diffusion_model_wrapper(self, executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        frames = kwargs.get("num_video_frames") or executor.class_obj.default_num_video_frames
        k = self.control_frames.shape[0]
        if not frames or x.shape[0] % frames or frames < k:
            raise ValueError(f"StreamingSVD: the UNet batch has {x.shape[0]} rows with num_video_frames "
                             f"{frames}; the CAM needs whole videos of at least {k} frames (frames are the batch "
                             f"of an SVD latent: sample {config.FRAMES} frames per chunk, without context windows)")
        videos = x.shape[0] // frames
        # frames [:k] of every video: cond and uncond videos get the same control frames, in any order
        rows = (torch.arange(videos, device=x.device)[:, None] * frames + torch.arange(k, device=x.device)).flatten()
        cam_options = {key: v for key, v in transformer_options.items() if key not in _BASE_ONLY}
        hs, mid = cam_features(
            self.cam.unet, x[rows], timesteps[rows], context[rows, :1], None if y is None else y[rows],
            self.encoding(x.device, x.dtype).repeat(videos, 1, 1, 1), k,
            torch.zeros(videos, k, device=x.device, dtype=x.dtype), cam_options)
        options = dict(transformer_options)  # the features live for this call only
        options[FEATURES_KEY] = {"skips": hs, "mid": mid, "frames": frames, "cond_frames": k}
        return executor(x, timesteps, context, y, control, options, **kwargs)

    def _merge(self, merger: nn.Module, h: torch.Tensor, cam: torch.Tensor, feats: dict) -> torch.Tensor:
        with _on(merger, h.device):
            dt = _param_dtype(merger)
            return merger(h.to(dt), cam.to(dt), feats["frames"], feats["cond_frames"]).to(h.dtype)

    def output_block_patch(self, h, hsp, transformer_options):
        feats = transformer_options.get(FEATURES_KEY)
        if feats is None:
            raise RuntimeError("StreamingSVD: the output-block patch ran without the CAM features; the UNet "
                               "was called without the patched MODEL's DIFFUSION_MODEL wrappers")
        i = transformer_options["block"][1]
        skips = feats["skips"]
        if i == 0:
            h = self._merge(self.mergers.mid, h, feats["mid"], feats)
        j = len(skips) - 1 - i  # output block i takes the skip of input block 11-i
        return h, self._merge(self.mergers.skips[j], hsp, skips[j], feats)


def streaming_svd_patch(model, cam: comfy.model_patcher.ModelPatcher, mergers, control_frames: torch.Tensor):
    """A clone of the SVD MODEL `model` that runs the CAM on `control_frames` (the last frames of the previous
    chunk, [K,3,H,W] or [1,K,3,H,W] pixels in [-1,1], K = config.COND_FRAMES, at the video's resolution) and
    merges its features into the UNet. `cam` from build_cam; `mergers` from build_mergers (or the
    {0..11, "mid": SkipMerger} dict of load_mergers). A patch already on `model` is replaced."""
    if control_frames.ndim == 5:
        if control_frames.shape[0] != 1:
            raise ValueError(f"control_frames: one video of control frames expected, got {tuple(control_frames.shape)}")
        control_frames = control_frames[0]
    if control_frames.ndim != 4 or control_frames.shape[1] != 3 or control_frames.shape[0] != config.COND_FRAMES:
        raise ValueError(f"control_frames: expected [{config.COND_FRAMES},3,H,W] pixels in [-1,1], got "
                         f"{tuple(control_frames.shape)}")
    if isinstance(mergers, comfy.model_patcher.ModelPatcher):
        merger_patcher = mergers
    else:
        merger_patcher = _merger_patcher(model, mergers)
    hooks = _StreamingSVDHooks(cam.model, merger_patcher.model, control_frames.detach().to("cpu", torch.float32))
    patched = model.clone()
    patched.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY)
    patches = patched.model_options["transformer_options"].get("patches", {})
    if "output_block_patch" in patches:  # a new list: the clone's model_options are its own
        patches["output_block_patch"] = [p for p in patches["output_block_patch"]
                                         if not isinstance(getattr(p, "__self__", None), _StreamingSVDHooks)]
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
                                 hooks.diffusion_model_wrapper)
    patched.set_model_output_block_patch(hooks.output_block_patch)
    patched.set_additional_models(MODELS_KEY, [cam, merger_patcher])
    return patched
