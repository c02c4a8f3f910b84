"""The OpenCLIP text tower of MS-Vid2Vid-XL: load errors."""
import pytest
import torch

from streamingt2v_core.enhancers.load import RefinerLoadError
from streamingt2v_core.enhancers.ms_vid2vid.text import OpenCLIPTextEncoder
from tools import make_tiny_refiner


def test_misshaped_text_encoder_tensor_is_named():
    state = make_tiny_refiner.tiny_component("text_encoder")
    state["transformer.resblocks.0.mlp.c_fc.weight"] = torch.zeros(4096, 1000)
    with pytest.raises(RefinerLoadError, match=r"(?s)^open_clip_pytorch_model\.bin: 1 tensor.*"
                       r"transformer\.resblocks\.0\.mlp\.c_fc\.weight: expected \[4096, 1024\], found \[4096, 1000\].*Fix: "):
        OpenCLIPTextEncoder.from_state_dict(state, where="open_clip_pytorch_model.bin")
