"""The base UNet of stage 2: the ModelScope UNet3D with the 13 CAM mergers and 16 APM-mixing
cross-attentions (official key names under `base_model.`; the mergers are in `cam.py`, the mixing in
`apm.py`).

The building blocks (resnets, temporal convs, spatial/temporal transformers) are diffusers'
`UNet3DConditionModel` blocks, whose key names the official checkpoint uses; the forward is ours,
because the skips are merged with CAM features by attention rather than added.
"""
from __future__ import annotations

import torch
from torch import nn

from ..common.unet3d import (build_diffusers_unet, spatial_cross_attentions, time_embedding, unet_encoder_forward,
                             use_sdpa)
from .apm import add_apm_mixing
from .cam import CAMMerger


class BaseUNet(nn.Module):
    """ModelScope UNet3D + CAM mergers + APM mixing."""

    def __init__(self, unet_config: dict, num_context_tokens: int = 93, text_tokens: int = 77):
        super().__init__()
        ref = build_diffusers_unet(unet_config)
        for name in ("conv_in", "time_proj", "time_embedding", "transformer_in", "down_blocks", "mid_block",
                     "up_blocks", "conv_norm_out", "conv_act", "conv_out"):
            setattr(self, name, getattr(ref, name))
        channels = [self.conv_in.out_channels]
        for block in self.down_blocks:
            for r in block.resnets:
                channels.append(r.out_channels)
            if block.downsamplers is not None:
                channels.append(block.downsamplers[0].out_channels)
        # One merger per skip connection (conv_in/transformer_in output included) and one on the mid output.
        self.cross_attention_merger_down_blocks = nn.ModuleList(CAMMerger(c) for c in channels)
        self.cross_attention_merger_mid_block = CAMMerger(unet_config["block_out_channels"][-1])
        dim = unet_config["cross_attention_dim"]
        for _, attn in spatial_cross_attentions(self):
            add_apm_mixing(attn, num_context_tokens, text_tokens, dim)
        use_sdpa(self)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                cam_skips: tuple, cam_mid: torch.Tensor) -> torch.Tensor:
        """sample (B, C, F, H, W); context (B, 93, D); CAM features as (B*8, C, h, w). Returns eps."""
        b, _, frames, h, w = sample.shape
        emb = time_embedding(self, timestep, b, frames, self.conv_in.weight.dtype)
        x = sample.permute(0, 2, 1, 3, 4).reshape(b * frames, -1, h, w)
        x, skips = unet_encoder_forward(self, x, emb, context, frames)
        skips = [m(s, c, b) for m, s, c in zip(self.cross_attention_merger_down_blocks, skips, cam_skips)]
        x = self.cross_attention_merger_mid_block(x, cam_mid, b)

        upsample_size = None
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            res, skips = tuple(skips[-n:]), skips[:-n]
            if i < len(self.up_blocks) - 1 and skips:
                upsample_size = skips[-1].shape[2:]
            if getattr(block, "has_cross_attention", False):
                x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=res, encoder_hidden_states=context,
                          upsample_size=upsample_size, num_frames=frames)
            else:
                x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size,
                          num_frames=frames)
        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        return x.reshape(b, frames, *x.shape[1:]).permute(0, 2, 1, 3, 4)
