"""t2v.memory: the parts low-vram mode may offload, and the activation estimate of one chunk."""
import torch
from torch import nn

from streamingt2v_core.t2v.config import StreamingT2VConfig, load_config
from streamingt2v_core.t2v.memory import OFFLOAD_PARTS, chunk_need_bytes
from streamingt2v_core.t2v.model import build_on_meta

from tests.support.paths import ORACLE

GIB = 1024 ** 3


def test_chunk_need_scales_from_3_gib():
    official = StreamingT2VConfig()
    assert chunk_need_bytes(official, 256, 256) == 3 * GIB
    assert chunk_need_bytes(official, 512, 512) == 12 * GIB  # by pixels
    assert chunk_need_bytes(official, 320, 576) == int(3 * GIB * 320 * 576 / (256 * 256))
    longer = StreamingT2VConfig(chunk_frames=24)
    assert chunk_need_bytes(longer, 256, 256) == int(4.5 * GIB)  # by frames per chunk
    tiny = load_config(ORACLE / "tiny_config.json")  # widest UNet level 192 of 1280
    assert chunk_need_bytes(tiny, 64, 64) == int(3 * GIB * (64 * 64) / (256 * 256) * 192 / 1280)


def test_offload_parts_are_the_per_chunk_parts():
    model = build_on_meta(load_config(ORACLE / "tiny_config.json"))
    assert all(isinstance(getattr(model, p), nn.Module) for p in OFFLOAD_PARTS)
    assert set(OFFLOAD_PARTS) == {"text_encoder", "image_encoder", "resampler", "vae"}
    # the two UNets run at every step and stay; every other part may go
    top = {n for n, _ in model.named_children()}
    assert top - set(OFFLOAD_PARTS) == {"base_model", "unet"} and model.cam is model.unet
    assert isinstance(model.base_model.conv_in.weight, torch.Tensor)
