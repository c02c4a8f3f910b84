"""The StreamingT2V refiner: MS-Vid2Vid-XL (official `Vid2VidSDUNet`, v-prediction) and, as a second family,
any diffusers-format `UNet3DConditionModel` text-to-video model (zeroscope_v2_XL) used as an SDEdit refiner.

The MS-Vid2Vid-XL UNet maps key for key onto diffusers' `UNet3DConditionModel` blocks
(reference/official_refiner.md §5.4) but computes differently in two layers, which we fix here:
Downsample pads (2, 1) instead of 1, and Upsample doubles with nearest then crops one row top and bottom.
Hence the latent height must be 2 mod 8 and the width 0 mod 8 (720x1280 pixels -> 90x160 latents).

Its text encoder is the OpenCLIP ViT-H-14 text tower used up to its penultimate layer, then `ln_final`
(§3); its autoencoder is the SD 2.1 `first_stage_model` (§4), mapped onto diffusers' AutoencoderKL.
Weights load from the official files safely (safetensors, or torch.load(weights_only=True), memory-mapped).
"""
from __future__ import annotations

import functools
import json
import os
import pickle
import re
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .schedules import VPSchedule

LATENT_SCALE = 0.18215  # SD 2.1 autoencoder scale used by the official refiner
OFFICIAL_FILES = {  # ModelScope damo/Video-to-Video v1.1.0 (configuration.json model_args)
    "unet": "non_ema_0035000.pth",
    "text_encoder": "open_clip_pytorch_model.bin",
    "autoencoder": "v2-1_512-ema-pruned.ckpt",
}
CONVERTED_FILES = {"unet": "unet.safetensors", "text_encoder": "text_encoder.safetensors",
                   "autoencoder": "vae.safetensors"}
_FIX = ("give the MS-Vid2Vid-XL folder (damo/Video-to-Video: non_ema_0035000.pth, open_clip_pytorch_model.bin, "
        "v2-1_512-ema-pruned.ckpt), its UNet file alone, a converted folder (unet/text_encoder/vae.safetensors) "
        "or a diffusers text-to-video folder (model_index.json + unet/ + scheduler/)")


class RefinerLoadError(ValueError):
    """A refiner weights source cannot be used; the message names the file and the fix."""


_SHAPE_FIX = ("Fix: the key names are right but sizes differ, so the file is damaged or mixes tensors of two models "
              "(an interrupted download or conversion): download it again, or convert it again "
              "(python -m streamingt2v_core.refiner SRC DST); a model of another size needs its config beside it "
              "(tiny_v2v_config.json or refiner_config.json in the folder)")
_SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from "
                            r"checkpoint, the shape in current model is torch\.Size\((\[[^\]]*\])\)")


def _misshaped_error(where, rows: list[tuple[str, list, list]], fix: str = _SHAPE_FIX, limit: int = 10):
    """RefinerLoadError listing (key, expected shape, shape found in the file) rows."""
    more = f", the first {limit} shown" if len(rows) > limit else ""
    lines = [f"{where}: {len(rows)} tensor(s) have the wrong shape for the model{more}:"]
    lines += [f"  {key}: expected {list(exp)}, found {list(got)}" for key, exp, got in rows[:limit]]
    lines.append(fix)
    return RefinerLoadError("\n".join(lines))


def check_shapes(module: nn.Module, state: Mapping[str, torch.Tensor], where, names: Mapping[str, str] | None = None,
                 file_state: Mapping[str, torch.Tensor] | None = None, fix: str = _SHAPE_FIX) -> None:
    """Before load_state_dict (whose bare RuntimeError names neither file nor fix): RefinerLoadError naming
    `where`, every mis-shaped key with expected vs found, and the fix. `names` maps the module's keys back to
    the file's and `file_state` holds the file's tensors when `state` was converted from them."""
    own = module.state_dict()
    rows = []
    for k in own:
        if k not in state or tuple(state[k].shape) == tuple(own[k].shape):
            continue
        expected, found = list(own[k].shape), list(state[k].shape)
        if names and file_state is not None:
            found = list(file_state[names[k]].shape)
            if len(found) == len(expected) + 1 and found[-1] == 1:
                expected.append(1)  # an official Conv1d(k=1) that becomes a Linear
        rows.append(((names or {}).get(k, k), expected, found))
    if rows:
        raise _misshaped_error(where, rows, fix)


def _from_pretrained(cls, folder: Path, fix: str, config_cls=None):
    """cls.from_pretrained(folder) (diffusers, or transformers with its `config_cls`); a size mismatch, which
    diffusers and transformers raise as a bare RuntimeError, re-raised as RefinerLoadError naming the file."""
    try:
        return cls.from_pretrained(folder)
    except RuntimeError as exc:
        rows, where = _misshaped_in_folder(cls, folder, config_cls)
        if not rows:  # .bin weights: torch's own message lists the mismatches
            rows = [(k, json.loads(exp), json.loads(got)) for k, got, exp in _SIZE_MISMATCH.findall(str(exc))]
        if not rows:
            raise
        raise _misshaped_error(where, rows, fix) from None


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


# --------------------------------------------------------------------------------------------------
# Reading weights safely

def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch.save file (.pth/.bin/.ckpt), unwrapping {'state_dict': ...}."""
    path = Path(path)
    if not path.is_file():
        raise RefinerLoadError(f"{path}: no such file; {_FIX}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError:
        # Lightning extras beside the weights: the project's restricted unpickler keeps only tensors
        from .checkpoint import read_state_dict

        return read_state_dict(path)
    except (RuntimeError, EOFError, OSError) as exc:
        raise RefinerLoadError(f"{path}: could not be read ({exc}); the file is truncated or corrupt, "
                               f"download it again") from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RefinerLoadError(f"{path}: not a mapping of names to tensors; {_FIX}")
    return dict(obj)


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


# --------------------------------------------------------------------------------------------------
# UNet: official key names -> diffusers UNet3DConditionModel

_RES_RENAMES = (("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
                ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut."))


def _resnet_key(prefix: str, j: int, rest: str) -> str:
    if rest.startswith("temopral_conv."):  # sic, the official spelling
        return f"{prefix}.temp_convs.{j}.{rest[len('temopral_conv.'):]}"
    for old, new in _RES_RENAMES:
        if rest.startswith(old):
            return f"{prefix}.resnets.{j}.{new}{rest[len(old):]}"
    raise KeyError(rest)


def official_to_diffusers_key(key: str, layers_per_block: int = 2) -> str:
    """Rename one official Vid2VidSDUNet key to diffusers UNet3DConditionModel naming."""
    n = layers_per_block
    for old, new in (("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
                     ("input_blocks.0.0.", "conv_in."), ("input_blocks.0.1.", "transformer_in."),
                     ("out.0.", "conv_norm_out."), ("out.2.", "conv_out.")):
        if key.startswith(old):
            return new + key[len(old):]
    m = re.match(r"input_blocks\.(\d+)\.(.*)$", key)
    if m:
        i, rest = int(m.group(1)) - 1, m.group(2)
        level, j = divmod(i, n + 1)
        pre = f"down_blocks.{level}"
        if j == n:  # the Downsample closing a level
            if rest.startswith("op."):
                return f"{pre}.downsamplers.0.conv.{rest[3:]}"
            raise KeyError(key)
        return _block_member(pre, j, rest, key)
    m = re.match(r"middle_block\.(\d)\.(.*)$", key)
    if m:
        idx, rest = int(m.group(1)), m.group(2)
        if idx in (0, 3):
            return _resnet_key("mid_block", idx // 3, rest)
        return f"mid_block.{'attentions' if idx == 1 else 'temp_attentions'}.0.{rest}"
    m = re.match(r"output_blocks\.(\d+)\.(\d+)\.(.*)$", key)
    if m:
        i, mod, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        level, j = divmod(i, n + 1)
        pre = f"up_blocks.{level}"
        if mod > 0 and rest.startswith("conv."):  # the Upsample closing a level
            return f"{pre}.upsamplers.0.{rest}"
        return _block_member(pre, j, f"{mod}.{rest}", key)
    raise KeyError(key)


def _block_member(pre: str, j: int, rest: str, key: str) -> str:
    mod, _, rest = rest.partition(".")
    if mod == "0":
        return _resnet_key(pre, j, rest)
    if mod == "1":
        return f"{pre}.attentions.{j}.{rest}"
    if mod == "2":
        return f"{pre}.temp_attentions.{j}.{rest}"
    raise KeyError(key)


def convert_official_unet(state: Mapping[str, torch.Tensor], layers_per_block: int = 2) -> dict[str, torch.Tensor]:
    """Official Vid2VidSDUNet state dict -> diffusers UNet3DConditionModel state dict (Conv1d k=1 -> Linear)."""
    out = {}
    for key, value in state.items():
        try:
            new = official_to_diffusers_key(key, layers_per_block)
        except KeyError:
            raise RefinerLoadError(f"unexpected key {key!r} in the refiner UNet weights; {_FIX}") from None
        if value.ndim == 3 and new.endswith(("proj_in.weight", "proj_out.weight")):
            value = value.squeeze(-1)  # temporal proj_in/out are Conv1d(k=1) officially
        out[new] = value
    return out


def is_official_unet(state: Mapping[str, torch.Tensor]) -> bool:
    return "input_blocks.0.0.weight" in state and "out.2.weight" in state


def infer_unet_config(state: Mapping[str, torch.Tensor], config: dict | None = None) -> dict:
    """UNet3DConditionModel kwargs from the official or diffusers tensor shapes (RefinerLoadError if incomplete)."""
    try:
        return _infer_unet_config(state, config)
    except (KeyError, ValueError, ZeroDivisionError) as exc:
        if isinstance(exc, RefinerLoadError):
            raise
        raise RefinerLoadError(f"the refiner UNet weights are incomplete or not a 3-D UNet (no {exc}); {_FIX}") from None


def _infer_unet_config(state: Mapping[str, torch.Tensor], config: dict | None = None) -> dict:
    """UNet3DConditionModel kwargs from the official or diffusers tensor shapes.

    The attention head size comes from `config` (tiny_v2v_config.json: unet.kwargs.head_dim, or a diffusers
    config's attention_head_dim), else from the initial temporal transformer (8 heads; official 64).
    """
    kw = ((config or {}).get("unet") or {}).get("kwargs") or {}
    head_dim = kw.get("head_dim", (config or {}).get("attention_head_dim"))
    if head_dim is None:
        # the initial temporal transformer has 8 heads of head_dim (official and diffusers alike)
        proj = state.get("input_blocks.0.1.proj_in.weight", state.get("transformer_in.proj_in.weight"))
        head_dim = proj.shape[0] // 8 if proj is not None else 64
    if is_official_unet(state):
        n_levels = sum(1 for k in state if re.fullmatch(r"input_blocks\.\d+\.op\.weight", k)) + 1
        n_out = len({int(m.group(1)) for k in state if (m := re.match(r"output_blocks\.(\d+)\.", k))})
        n = n_out // n_levels - 1
        firsts = [1 + level * (n + 1) for level in range(n_levels)]
        channels = [state[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0] for i in firsts]
        attn = [f"input_blocks.{i}.1.norm.weight" in state for i in firsts]
        in_ch, out_ch = state["input_blocks.0.0.weight"].shape[1], state["out.2.weight"].shape[0]
        ctx_key = next((f"input_blocks.{i}.1.transformer_blocks.0.attn2.to_k.weight" for i, a in zip(firsts, attn) if a),
                       "cross-attention key")
    else:
        n_levels = len({int(m.group(1)) for k in state if (m := re.match(r"down_blocks\.(\d+)\.", k))})
        n = len({int(m.group(1)) for k in state if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))})
        channels = [state[f"down_blocks.{lv}.resnets.0.conv2.weight"].shape[0] for lv in range(n_levels)]
        attn = [f"down_blocks.{lv}.attentions.0.norm.weight" in state for lv in range(n_levels)]
        in_ch, out_ch = state["conv_in.weight"].shape[1], state["conv_out.weight"].shape[0]
        ctx_key = next((f"down_blocks.{lv}.attentions.0.transformer_blocks.0.attn2.to_k.weight"
                        for lv, a in enumerate(attn) if a), "cross-attention key")
    if not any(attn):
        raise RefinerLoadError("the refiner UNet has no cross-attention layers; " + _FIX)
    down = tuple("CrossAttnDownBlock3D" if a else "DownBlock3D" for a in attn)
    up = tuple("CrossAttnUpBlock3D" if a else "UpBlock3D" for a in reversed(attn))
    return dict(in_channels=int(in_ch), out_channels=int(out_ch), block_out_channels=tuple(int(c) for c in channels),
                layers_per_block=int(n), down_block_types=down, up_block_types=up,
                cross_attention_dim=int(state[ctx_key].shape[1]), attention_head_dim=int(head_dim),
                norm_num_groups=32)


class CroppedUpsample(nn.Module):
    """Official MS-Vid2Vid Upsample (`dims=2.0`): nearest x2, crop one row top and bottom, 3x3 conv."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")[..., 1:-1, :]
        return self.conv(x)


def build_unet(unet_config: dict, official_resampling: bool = True):
    """diffusers UNet3DConditionModel; `official_resampling` applies the two MS-Vid2Vid layer fixes."""
    from diffusers import UNet3DConditionModel

    unet = UNet3DConditionModel(**unet_config)
    if official_resampling:
        _official_resampling(unet)
    return unet.eval().requires_grad_(False)


def _official_resampling(unet) -> None:
    for block in unet.down_blocks:
        for ds in block.downsamplers or []:
            ds.conv.padding = (2, 1)  # 2 rows top/bottom, 1 column left/right
    for block in unet.up_blocks:
        if block.upsamplers:
            block.upsamplers[0] = CroppedUpsample(block.upsamplers[0].conv)


def check_latent_size(h: int, w: int) -> None:
    if h % 8 != 2 or w % 8 != 0:
        raise ValueError(f"MS-Vid2Vid latents must be h = 2 mod 8 and w = 0 mod 8 (pixels: H = 16 mod 64, W = 0 mod 64,"
                         f" e.g. 720x1280 -> 90x160); got {h}x{w}")


# --------------------------------------------------------------------------------------------------
# Text: OpenCLIP text tower, penultimate layer + ln_final

class _TextBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)  # only its parameters (in_proj_*, out_proj) are used
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, D)
        n, length, d = x.shape
        q, k, v = F.linear(self.ln_1(x), self.attn.in_proj_weight, self.attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.view(n, length, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(n, length, d)
        x = x + self.attn.out_proj(a)
        return x + self.mlp(self.ln_2(x))


@functools.lru_cache(maxsize=1)
def _clip_bpe():
    from open_clip.tokenizer import SimpleTokenizer  # ships the CLIP BPE vocabulary; read once

    return SimpleTokenizer()


class OpenCLIPTextEncoder(nn.Module):
    """OpenCLIP text tower as FrozenOpenCLIPEmbedder(layer='penultimate') runs it: blocks 0..L-2, then ln_final."""

    def __init__(self, vocab: int = 49408, context: int = 77, width: int = 1024, heads: int = 16, layers: int = 24):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.zeros(context, width))
        self.transformer = nn.Module()
        # the last block is never run: not built, not loaded
        self.transformer.resblocks = nn.ModuleList(_TextBlock(width, heads) for _ in range(layers - 1))
        self.ln_final = nn.LayerNorm(width)
        self.context_length = context

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], heads: int | None = None,
                        where="OpenCLIP text weights"):
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k)))
        vocab, width = state["token_embedding.weight"].shape
        enc = cls(vocab, state["positional_embedding"].shape[0], width, heads or width // 64, layers)
        own = enc.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise RefinerLoadError(f"{where}: the OpenCLIP text weights lack {missing[:5]} ({len(missing)} keys); "
                                   f"{_FIX}")
        check_shapes(enc, state, where)
        enc.load_state_dict({k: state[k] for k in own})
        return enc.eval().requires_grad_(False)

    @staticmethod
    def tokenize(texts: list[str], context: int = 77) -> torch.Tensor:
        """open_clip.tokenize: lower-cased CLIP BPE, SOT ... EOT, zero padded (EOT forced when truncated)."""
        tok = _clip_bpe()
        sot, eot = tok.encoder["<start_of_text>"], tok.encoder["<end_of_text>"]
        out = torch.zeros(len(texts), context, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [sot] + tok.encode(text) + [eot]
            if len(ids) > context:
                ids = ids[:context]
                ids[-1] = eot
            out[i, :len(ids)] = torch.tensor(ids)
        return out

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids) + self.positional_embedding
        for block in self.transformer.resblocks:
            x = block(x)
        return self.ln_final(x)


# --------------------------------------------------------------------------------------------------
# Autoencoder: SD 2.1 first_stage_model (LDM names) -> diffusers AutoencoderKL

def build_autoencoder(state: Mapping[str, torch.Tensor], where="autoencoder weights"):
    """diffusers AutoencoderKL from an LDM `first_stage_model.*` (prefix optional) or diffusers state dict."""
    from diffusers import AutoencoderKL

    if any(k.startswith("first_stage_model.") for k in state):
        # official filter: every key containing first_stage_model, prefix cut (decoys elsewhere are ignored)
        state = {k.split("first_stage_model.", 1)[1]: v for k, v in state.items() if "first_stage_model." in k}
    if "encoder.down.0.block.0.conv1.weight" in state:  # LDM names
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        n_levels = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
        channels = [state[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] for i in range(n_levels)]
        layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)))
        cfg = dict(in_channels=state["encoder.conv_in.weight"].shape[1], out_channels=state["decoder.conv_out.weight"].shape[0],
                   down_block_types=("DownEncoderBlock2D",) * n_levels, up_block_types=("UpDecoderBlock2D",) * n_levels,
                   block_out_channels=tuple(channels), layers_per_block=layers,
                   latent_channels=state["decoder.conv_in.weight"].shape[1], norm_num_groups=32,
                   scaling_factor=LATENT_SCALE)
        state = convert_ldm_vae_checkpoint(state, cfg)
    else:
        n_levels = len({int(m.group(1)) for k in state if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))})
        channels = [state[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"].shape[0] for i in range(n_levels)]
        cfg = dict(in_channels=state["encoder.conv_in.weight"].shape[1], out_channels=state["decoder.conv_out.weight"].shape[0],
                   down_block_types=("DownEncoderBlock2D",) * n_levels, up_block_types=("UpDecoderBlock2D",) * n_levels,
                   block_out_channels=tuple(channels),
                   layers_per_block=len({k.split(".")[4] for k in state if k.startswith("encoder.down_blocks.0.resnets.")}),
                   latent_channels=state["decoder.conv_in.weight"].shape[1], norm_num_groups=32,
                   scaling_factor=LATENT_SCALE)
    vae = AutoencoderKL(**cfg)
    check_shapes(vae, state, where)  # key names as diffusers' AutoencoderKL has them
    missing, unexpected = vae.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RefinerLoadError(f"{where}: the autoencoder weights do not fit an SD AutoencoderKL: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}; {_FIX}")
    return vae.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------------
# Refiner models

def _guided(unet, x_t, t, context, negative_context, guidance, rescale, dtype, rows_together=True):
    """One denoiser call of a chunk batch: CFG as one batch of positive and negative rows (or, with
    `rows_together=False`, one call per row: half the activations), then rescale.

    Returns (y_out, u_out, out) in float32; out is the guided and rescaled prediction (official diff:70-83).
    """
    b = x_t.shape[0]
    ctx = context.expand(b, -1, -1) if context.shape[0] == 1 else context
    if guidance == 1.0:
        y = unet(x_t.to(dtype), t.expand(b).to(x_t.device), encoder_hidden_states=ctx.to(dtype), return_dict=False)[0].float()
        return y, y, y
    neg = negative_context.expand(b, -1, -1) if negative_context.shape[0] == 1 else negative_context
    if rows_together:
        both = unet(torch.cat([x_t, x_t]).to(dtype), t.expand(2 * b).to(x_t.device),
                    encoder_hidden_states=torch.cat([ctx, neg]).to(dtype), return_dict=False)[0].float()
        y_out, u_out = both[:b], both[b:]
    else:
        tt, x = t.expand(b).to(x_t.device), x_t.to(dtype)
        y_out = unet(x, tt, encoder_hidden_states=ctx.to(dtype), return_dict=False)[0].float()
        u_out = unet(x, tt, encoder_hidden_states=neg.to(dtype), return_dict=False)[0].float()
    out = u_out + guidance * (y_out - u_out)
    if rescale:
        dims = tuple(range(1, out.ndim))
        ratio = y_out.std(dim=dims, keepdim=True) / (out.std(dim=dims, keepdim=True) + 1e-12)
        out = out * (rescale * ratio + (1 - rescale))
    return y_out, u_out, out


class SDEditRefiner(nn.Module):
    """What refine_latents needs from a refiner: guided x0 predictions of chunk batches and the schedule."""

    prediction_type = "v_prediction"

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def alpha_sigma(self, t) -> tuple[float, float]:
        raise NotImplementedError

    def denoise(self, x_t, t, context, negative_context, guidance=7.5, rescale=0.2, rows_together=True) -> dict:
        """Official `denoise` for a batch of chunks: y_out, u_out, the guided `out`, and x0 at the integer t."""
        t = torch.as_tensor(t).long().reshape(-1)[:1]
        y_out, u_out, out = _guided(self.unet, x_t, t, context.to(x_t.device), negative_context.to(x_t.device),
                                    guidance, rescale, self.dtype, rows_together)
        a, s = self.alpha_sigma(t)
        x = x_t.float()
        if self.prediction_type == "v_prediction":
            x0 = a * x - s * out
        elif self.prediction_type == "epsilon":
            x0 = (x - s * out) / a
        else:
            x0 = out
        return {"y_out": y_out, "u_out": u_out, "out": out, "x0": x0}

    @torch.no_grad()
    def predict_x0(self, x_t, t, context, negative_context, guidance=7.5, rescale=0.2, rows_together=True) -> torch.Tensor:
        """x0 of one chunk (or a batch of chunks): x_t (B, 4, F, h, w) as the UNet sees it, t an integer tensor.
        rows_together=False runs the guidance rows one UNet call each (half the activation memory)."""
        return self.denoise(x_t, t, context, negative_context, guidance, rescale, rows_together)["x0"]

    @property
    def latent_factor(self) -> int:
        """Pixels per latent pixel: 2 ** (autoencoder levels - 1), 8 for the SD autoencoders."""
        if self.vae is None:
            return 8
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def meta_unet(self):
        """The UNet's architecture on the meta device (no weights, no memory), in the UNet's dtype: what
        activation estimates run on (refine.chunk_activation_bytes)."""
        from diffusers import UNet3DConditionModel

        with torch.device("meta"):
            unet = UNet3DConditionModel.from_config(self.unet.config)
        if any(isinstance(b.upsamplers[0], CroppedUpsample) for b in self.unet.up_blocks if b.upsamplers):
            _official_resampling(unet)
        return nn.Module.to(unet, self.dtype).eval().requires_grad_(False)  # diffusers' own .to() warns here


class MSVid2VidRefiner(SDEditRefiner):
    """MS-Vid2Vid-XL: v-prediction UNet on the logsnr_cosine_interp zero-terminal-SNR schedule, DPM++(2M) SDE."""

    family = "ms-vid2vid"
    latent_scale = LATENT_SCALE
    canvas = (720, 1280)  # official padded frame (H, W)

    def __init__(self, unet, text_encoder=None, vae=None, dtype=torch.float32):
        super().__init__()
        self.unet, self.text_encoder, self.vae = unet, text_encoder, vae
        self.schedule = VPSchedule()
        self.dtype = dtype

    def check_latent_size(self, h: int, w: int) -> None:
        check_latent_size(h, w)

    def first_timestep(self, steps: int, t_start: int) -> int:
        return int(t_start)  # the trailing plan starts exactly at t_start

    def alpha_sigma(self, t) -> tuple[float, float]:
        a, s = self.schedule.alpha_sigma(torch.as_tensor(t).reshape(-1)[:1])
        return float(a), float(s)

    @torch.no_grad()
    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """(context, negative_context), each (1, 77, 1024); the caption is `"<prompt>, "` as in the official pipeline."""
        if self.text_encoder is None:
            raise RuntimeError("this refiner was loaded without its text encoder (open_clip_pytorch_model.bin)")
        ids = OpenCLIPTextEncoder.tokenize([prompt + ", ", negative_prompt]).to(self.device)
        emb = self.text_encoder(ids).float()
        return emb[:1], emb[1:]


def _load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _find(folder: Path, *names: str) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def load_refiner(source, config=None, device="cpu", dtype=torch.float32):
    """Load a refiner.

    source: the official MS-Vid2Vid-XL folder (damo/Video-to-Video; `configuration.json` optional), a folder of
    converted files (unet/text_encoder/vae.safetensors), the UNet file alone (.pth or .safetensors, official or
    diffusers key names; then no text encoder/VAE), a UNet state dict, or a diffusers text-to-video folder
    (model_index.json, unet/, scheduler/, text_encoder/, tokenizer/, vae/), which gives the second family.
    config: dict or JSON path in the oracle's tiny_v2v_config.json format (only what shapes cannot tell).
    """
    if isinstance(config, (str, os.PathLike)):
        config = json.loads(Path(config).read_text())
    text_state = vae_state = None
    unet_where, text_where, vae_where = "refiner UNet state dict", "text encoder weights", "autoencoder weights"
    if isinstance(source, Mapping):
        unet_state = dict(source.get("state_dict", source))
    else:
        path = Path(source)
        if path.is_dir():
            if (path / "model_index.json").is_file() or (path / "unet" / "config.json").is_file():
                return load_diffusers_refiner(path, device=device, dtype=dtype)
            config = config or _load_json(path / "tiny_v2v_config.json") or _load_json(path / "refiner_config.json")
            unet_file = _find(path, CONVERTED_FILES["unet"], OFFICIAL_FILES["unet"])
            if unet_file is None:
                raise RefinerLoadError(f"{path}: no {CONVERTED_FILES['unet']} or {OFFICIAL_FILES['unet']} here; {_FIX}")
            unet_state, unet_where = read_weights(unet_file), unet_file
            text_file = _find(path, CONVERTED_FILES["text_encoder"], OFFICIAL_FILES["text_encoder"])
            vae_file = _find(path, CONVERTED_FILES["autoencoder"], OFFICIAL_FILES["autoencoder"])
            text_where, vae_where = text_file, vae_file
            text_state = read_weights(text_file) if text_file else None
            vae_state = read_weights(vae_file) if vae_file else None
        else:
            unet_state, unet_where = read_weights(path), path
    unet_cfg = infer_unet_config(unet_state, config)
    file_names = file_state = None  # diffusers key -> the file's own (official) key and tensor, for errors
    if is_official_unet(unet_state):
        file_state, unet_state = unet_state, convert_official_unet(unet_state, unet_cfg["layers_per_block"])
        file_names = {official_to_diffusers_key(k, unet_cfg["layers_per_block"]): k for k in file_state}
    unet = build_unet(unet_cfg)
    check_shapes(unet, unet_state, unet_where, file_names, file_state)
    del file_state
    missing, unexpected = unet.load_state_dict(unet_state, strict=False)
    if missing or unexpected:
        raise RefinerLoadError(f"{unet_where}: refiner UNet weights: {len(missing)} missing (e.g. {missing[:3]}), "
                               f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); {_FIX}")
    del unet_state  # shape mismatches already raised inside load_state_dict
    text = None
    if text_state is not None:
        heads = ((config or {}).get("text_encoder") or {}).get("open_clip_config", {}).get("text_cfg", {}).get("heads")
        text = OpenCLIPTextEncoder.from_state_dict(text_state, heads, where=text_where)
    vae = build_autoencoder(vae_state, where=vae_where) if vae_state is not None else None
    unet = unet.to(device) if dtype == torch.float32 else unet.to(device=device, dtype=dtype)
    model = MSVid2VidRefiner(unet, text, vae, dtype)
    pixel_hw = ((config or {}).get("video") or {}).get("pixel_hw")
    if pixel_hw:  # the tiny oracle refiner works on an 80x128 canvas instead of 720x1280
        model.canvas = (int(pixel_hw[0]), int(pixel_hw[1]))
    if text is not None:
        text.to(device)  # fp32, as officially
    if vae is not None:
        vae.to(device)   # fp32 encode; decode may be cast by the caller
    return model


# --------------------------------------------------------------------------------------------------
# Second family: a diffusers text-to-video UNet3DConditionModel (e.g. zeroscope_v2_XL) as SDEdit refiner

class DiffusersT2VRefiner(SDEditRefiner):
    """A diffusers T2V model refining with its own scheduler; blending works on x0 as for MS-Vid2Vid."""

    family = "diffusers"

    def __init__(self, unet, scheduler, text_encoder=None, tokenizer=None, vae=None, dtype=torch.float32,
                 canvas: tuple[int, int] = (576, 1024)):
        super().__init__()
        if getattr(scheduler, "init_noise_sigma", 1.0) != 1.0:
            raise RefinerLoadError(f"{type(scheduler).__name__} is a sigma-space scheduler; the SDEdit refiner needs a "
                                   f"VP one (DDIM, DDPM, DPMSolverMultistep, UniPC): change scheduler/scheduler_config.json")
        self.unet, self.scheduler, self.text_encoder, self.tokenizer, self.vae = unet, scheduler, text_encoder, tokenizer, vae
        self.dtype, self.canvas = dtype, canvas
        self.latent_scale = float(vae.config.scaling_factor) if vae is not None else LATENT_SCALE
        self.prediction_type = scheduler.config.prediction_type
        self.alphas_cumprod = scheduler.alphas_cumprod.float().cpu()

    def check_latent_size(self, h: int, w: int) -> None:
        if h < 1 or w < 1:
            raise ValueError(f"latent size must be positive, got {h}x{w}")

    def alpha_sigma(self, t) -> tuple[float, float]:
        ac = float(self.alphas_cumprod[int(torch.as_tensor(t).reshape(-1)[0])])
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

    @torch.no_grad()
    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        if self.text_encoder is None or self.tokenizer is None:
            raise RuntimeError("this refiner was loaded without text_encoder/ and tokenizer/")
        ids = self.tokenizer([prompt, negative_prompt], padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
        emb = self.text_encoder(ids.to(self.device))[0].float()
        return emb[:1], emb[1:]


def load_diffusers_refiner(folder, device="cpu", dtype=torch.float32, canvas: tuple[int, int] = (576, 1024)):
    """A diffusers T2V folder: unet/ and scheduler/ required; text_encoder/, tokenizer/, vae/ when present."""
    import diffusers
    from diffusers import AutoencoderKL, UNet3DConditionModel

    folder = Path(folder)
    sched_cfg = _load_json(folder / "scheduler" / "scheduler_config.json")
    if not (folder / "unet" / "config.json").is_file() or sched_cfg is None:
        raise RefinerLoadError(f"{folder}: a diffusers refiner folder needs unet/config.json and "
                               f"scheduler/scheduler_config.json; {_FIX}")
    sched_cls = getattr(diffusers, sched_cfg.get("_class_name", "DDIMScheduler"), None)
    if sched_cls is None:
        raise RefinerLoadError(f"{folder}: unknown scheduler {sched_cfg.get('_class_name')!r} in scheduler_config.json")
    fix = ("Fix: the weights do not fit the config.json beside them: download the folder again, or keep each "
           "part's config.json with the weights it came with")
    unet = _from_pretrained(UNet3DConditionModel, folder / "unet", fix).eval().requires_grad_(False)
    text = tok = vae = None
    if (folder / "text_encoder").is_dir() and (folder / "tokenizer").is_dir():
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        text = _from_pretrained(CLIPTextModel, folder / "text_encoder", fix, CLIPTextConfig)
        text = text.eval().requires_grad_(False).to(device)
        tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    if (folder / "vae").is_dir():
        vae = _from_pretrained(AutoencoderKL, folder / "vae", fix).eval().requires_grad_(False).to(device)
    return DiffusersT2VRefiner(unet.to(device=device, dtype=dtype), sched_cls.from_config(sched_cfg), text, tok, vae,
                               dtype, canvas)


# --------------------------------------------------------------------------------------------------
# Conversion: the official MS-Vid2Vid-XL files -> a folder of safetensors (only the tensors the refiner uses)

def convert_official_folder(src, dst, dtype: str = "fp16") -> Path:
    """Write unet/text_encoder/vae.safetensors from the official folder: official key names, the text tower
    without the vision tower, the autoencoder without the rest of the SD checkpoint.
    The UNet is stored in `dtype` (the official run casts it to fp16); text encoder and VAE stay fp32."""
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    files = {name: _find(src, OFFICIAL_FILES[name]) for name in OFFICIAL_FILES}
    missing = [OFFICIAL_FILES[n] for n, f in files.items() if f is None]
    if missing:
        raise RefinerLoadError(f"{src}: missing {', '.join(missing)}; {_FIX}")
    unet_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    dst.mkdir(parents=True, exist_ok=True)
    unet = read_weights(files["unet"])
    infer_unet_config(unet)  # refuse anything that is not a Vid2Vid UNet before writing
    save_file({k: v.to(unet_dtype).contiguous() for k, v in unet.items()}, str(dst / CONVERTED_FILES["unet"]))
    del unet
    text = read_weights(files["text_encoder"])
    text = {k[len("module."):] if k.startswith("module.") else k: v for k, v in text.items()}
    # the text tower only (the vision tower is deleted officially); the last block stays so the depth,
    # and hence which layer is the penultimate, can still be read from the keys
    keep = [k for k in text if k.startswith(("token_embedding.", "positional_embedding", "transformer.", "ln_final."))]
    OpenCLIPTextEncoder.from_state_dict({k: text[k] for k in keep})  # refuse an incomplete tower before writing
    save_file({k: text[k].float().contiguous() for k in keep}, str(dst / CONVERTED_FILES["text_encoder"]))
    del text
    vae = read_weights(files["autoencoder"])
    save_file({k: v.float().contiguous() for k, v in vae.items() if k.startswith("first_stage_model.")},
              str(dst / CONVERTED_FILES["autoencoder"]))
    for name in ("tiny_v2v_config.json", "refiner_config.json"):
        if (src / name).is_file():
            (dst / name).write_text((src / name).read_text())
    return dst


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m streamingt2v_core.refiner",
                                 description="Convert the official MS-Vid2Vid-XL folder to safetensors.")
    ap.add_argument("src", help="folder with non_ema_0035000.pth, open_clip_pytorch_model.bin, v2-1_512-ema-pruned.ckpt")
    ap.add_argument("dst", help="output folder (e.g. ComfyUI/models/streamingt2v_refiner/ms_vid2vid_xl)")
    ap.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16", help="UNet storage dtype")
    args = ap.parse_args(argv)
    print(convert_official_folder(args.src, args.dst, args.dtype))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
