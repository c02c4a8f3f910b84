"""t2v.unet: the base UNet's added parts on the official architecture (meta device): one CAM merger per
skip connection with its width, APM mixing on exactly the 16 spatial cross-attentions, SDPA everywhere."""
import torch

from streamingt2v_core.common.attention import SDPAProcessor
from streamingt2v_core.common.unet3d import spatial_cross_attentions
from streamingt2v_core.t2v.config import OFFICIAL_UNET
from streamingt2v_core.t2v.unet import BaseUNet


def test_official_base_unet_parts():
    with torch.device("meta"):
        unet = BaseUNet(OFFICIAL_UNET)
    widths = [m.temporal_transformer.proj_in.in_features for m in unet.cross_attention_merger_down_blocks]
    # conv_in/transformer_in, then per level 2 resnets + a downsampler (none after the last)
    assert widths == [320, 320, 320, 320, 640, 640, 640, 1280, 1280, 1280, 1280, 1280]
    assert unet.cross_attention_merger_mid_block.temporal_transformer.proj_in.in_features == 1280
    with_apm = {n for n, m in unet.named_modules() if hasattr(m, "alpha")}
    assert with_apm == {n for n, _ in spatial_cross_attentions(unet)} and len(with_apm) == 16
    assert all(tuple(m.conv.weight.shape) == (77, 93, 3) for n, m in unet.named_modules() if n in with_apm)
    attentions = [m for m in unet.modules() if hasattr(m, "to_q") and hasattr(m, "set_processor")]
    assert attentions and all(type(m.processor) is SDPAProcessor for m in attentions)
