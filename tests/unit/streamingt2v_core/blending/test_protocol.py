"""The Enhancer protocol: both families implement it, and the preview is the middle frame's decoded x0."""
import pytest
import torch

from streamingt2v_core.blending.protocol import Enhancer
from streamingt2v_core.blending.sdedit import preview
from streamingt2v_core.enhancers.load import load_refiner
from tools import make_tiny_refiner


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_refiner(make_tiny_refiner.write(tmp_path_factory.mktemp("tiny_v2v"), "converted"))


def test_both_families_are_enhancers(tiny):
    from diffusers import DDIMScheduler, UNet3DConditionModel

    from streamingt2v_core.enhancers.diffusers_t2v import DiffusersT2VRefiner

    unet = UNet3DConditionModel(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=32,
                                down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                                up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"))
    for enhancer in (tiny, DiffusersT2VRefiner(unet, DDIMScheduler())):
        assert isinstance(enhancer, Enhancer), type(enhancer).__name__


def test_preview_is_the_decoded_middle_frame(tiny):
    """What the node's progress bar shows: frame F // 2 of the blended x0, decoded, as IMAGE [H, W, 3] in [0, 1]."""
    x0 = torch.randn(1, 4, 5, 10, 16, generator=torch.Generator().manual_seed(0))
    image = tiny.preview(x0)
    assert image.shape == (80, 128, 3) and image.device.type == "cpu"
    assert image.min() >= 0 and image.max() <= 1
    with torch.no_grad():
        px = tiny.vae.decode(x0[:, :, 2].float() / tiny.latent_scale).sample[0]
    torch.testing.assert_close(image, ((px.clamp(-1, 1) + 1) / 2).permute(1, 2, 0), rtol=0, atol=0)
    torch.testing.assert_close(preview(tiny, x0), image, rtol=0, atol=0)


def test_no_preview_without_an_autoencoder(tiny):
    class NoVAE:
        vae = None
        latent_scale = tiny.latent_scale

    assert preview(NoVAE(), torch.zeros(1, 4, 3, 10, 16)) is None
