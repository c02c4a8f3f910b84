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


def _diffusers_refiner():
    from diffusers import DDIMScheduler, UNet3DConditionModel

    from streamingt2v_core.enhancers.diffusers_t2v import DiffusersT2VRefiner

    torch.manual_seed(0)
    unet = UNet3DConditionModel(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=32,
                                down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                                up_block_types=("UpBlock3D", "CrossAttnUpBlock3D")).eval()
    return DiffusersT2VRefiner(unet, DDIMScheduler())


BAD_X0_CALLS = [
    ("context batch 2 of 3", dict(context=torch.zeros(2, 77, 32)), r"context.*batch 2.*3"),
    ("negative batch 2 of 3", dict(negative_context=torch.zeros(2, 77, 32)), r"negative_context.*batch 2.*3"),
    ("context width", dict(context=torch.zeros(1, 77, 16)), r"context.*\(1, 77, 16\).*32"),
    ("negative tokens", dict(negative_context=torch.zeros(1, 70, 32)),
     r"negative_context.*\(1, 70, 32\).*context.*\(1, 77, 32\)"),
    ("x_t channels", dict(x_t=torch.zeros(3, 3, 4, 8, 8)), r"x_t.*3 channels.*4"),
    ("x_t 4-D", dict(x_t=torch.zeros(3, 4, 8, 8)), r"x_t.*\(B, 4, F, h, w\)"),
    ("x_t integer", dict(x_t=torch.zeros(3, 4, 4, 8, 8, dtype=torch.long)), r"x_t.*torch.int64"),
    ("two timesteps", dict(t=torch.tensor([500, 400])), r"t.*\[500, 400\].*one timestep"),
]


@pytest.mark.parametrize("kw, message", [c[1:] for c in BAD_X0_CALLS], ids=[c[0] for c in BAD_X0_CALLS])
def test_predict_x0_refuses_inconsistent_inputs(monkeypatch, kw, message):
    refiner = _diffusers_refiner()
    monkeypatch.setattr(refiner.unet, "forward", lambda *a, **k: pytest.fail("the UNet ran before the check"))
    args = dict(x_t=torch.zeros(3, 4, 4, 8, 8), t=torch.tensor([500]), context=torch.zeros(1, 77, 32),
                negative_context=torch.zeros(1, 77, 32))
    args.update(kw)
    with pytest.raises(ValueError, match=message):
        refiner.predict_x0(**args)


def test_predict_x0_takes_one_context_per_chunk_or_one_for_all():
    """A context of batch 1 or of the chunk batch are the same call; t may be 0-d, (1,) or (B,) of one value."""
    refiner = _diffusers_refiner()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 4, 8, 8, generator=g)
    ctx, neg = torch.randn(1, 77, 32, generator=g), torch.randn(1, 77, 32, generator=g)
    ref = refiner.predict_x0(x, torch.tensor([500]), ctx, neg)
    torch.testing.assert_close(refiner.predict_x0(x, torch.tensor([500, 500]), ctx.repeat(2, 1, 1), neg), ref,
                               rtol=0, atol=0)
    torch.testing.assert_close(refiner.predict_x0(x, torch.tensor(500), ctx, neg.repeat(2, 1, 1)), ref, rtol=0, atol=0)


def test_alpha_sigma_refuses_timesteps_outside_the_schedule(tiny):
    refiner = _diffusers_refiner()
    for enhancer in (tiny, refiner):
        for t in (-1, 1000):
            with pytest.raises(ValueError, match=rf"timestep {t}.*0\.\.999"):
                enhancer.alpha_sigma(t)
        assert enhancer.alpha_sigma(999)[0] >= 0
