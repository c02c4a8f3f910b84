"""Second refiner family: a diffusers UNet3DConditionModel T2V model (zeroscope-like) with its own scheduler."""
import pytest
import torch

from streamingt2v_core.refine import refine_latents
from streamingt2v_core.refiner import DiffusersT2VRefiner, load_refiner


def tiny_unet():
    from diffusers import UNet3DConditionModel

    torch.manual_seed(0)
    return UNet3DConditionModel(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=32,
                                down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                                up_block_types=("UpBlock3D", "CrossAttnUpBlock3D")).eval()


def ddim(prediction_type="epsilon"):
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                         set_alpha_to_one=False, prediction_type=prediction_type)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_single_chunk_equals_a_plain_diffusers_loop(prediction_type):
    """With one chunk, x0-blending through prediction_type='sample' must equal the scheduler fed the raw output."""
    unet = tiny_unet()
    ref = DiffusersT2VRefiner(unet, ddim(prediction_type))
    g = torch.Generator().manual_seed(1)
    noised = torch.randn(1, 4, 12, 8, 8, generator=g)
    ctx, neg = torch.randn(1, 77, 32, generator=g), torch.randn(1, 77, 32, generator=g)
    out = refine_latents(ref, noised, ctx, neg, chunk=24, overlap=8, steps=4, t_start=599, guidance=3.0, rescale=0.0)

    sched, timesteps = ref.sdedit_scheduler(4, 599)
    assert len(timesteps) == 4 and int(timesteps[0]) <= 599
    plain = ddim(prediction_type)
    plain.set_timesteps(len(sched.timesteps))
    x = noised
    with torch.no_grad():
        for t in timesteps:
            both = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([ctx, neg])).sample
            y, u = both.chunk(2)
            x = plain.step(u + 3.0 * (y - u), t, x).prev_sample
    torch.testing.assert_close(out, x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("frames", [16, 41])
def test_blended_refinement_keeps_every_frame(frames):
    ref = DiffusersT2VRefiner(tiny_unet(), ddim())
    noised = torch.randn(1, 4, frames, 8, 8, generator=torch.Generator().manual_seed(2))
    ctx = torch.randn(1, 77, 32)
    a = refine_latents(ref, noised, ctx, torch.zeros_like(ctx), chunk=8, overlap=3, steps=2, seed=5)
    b = refine_latents(ref, noised, ctx, torch.zeros_like(ctx), chunk=8, overlap=3, steps=2, seed=5)
    c = refine_latents(ref, noised, ctx, torch.zeros_like(ctx), chunk=8, overlap=3, steps=2, seed=6)
    assert a.shape == noised.shape and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # a seed reproduces the result
    assert not torch.equal(a, c)  # the cuts depend on the seed


def test_loads_a_diffusers_folder(tmp_path):
    unet = tiny_unet()
    unet.save_pretrained(tmp_path / "unet")
    ddim().save_pretrained(tmp_path / "scheduler")
    ref = load_refiner(tmp_path)
    assert ref.family == "diffusers" and ref.prediction_type == "epsilon"
    x = torch.randn(1, 4, 4, 8, 8)
    ctx = torch.randn(1, 77, 32)
    torch.testing.assert_close(ref.predict_x0(x, torch.tensor([500]), ctx, ctx, guidance=1.0),
                               DiffusersT2VRefiner(unet, ddim()).predict_x0(x, torch.tensor([500]), ctx, ctx, guidance=1.0))


def test_batched_chunks_equal_one_by_one():
    """All chunks of a step in one UNet call give what one call per chunk gives."""
    ref = DiffusersT2VRefiner(tiny_unet(), ddim())
    noised = torch.randn(1, 4, 41, 8, 8, generator=torch.Generator().manual_seed(3))
    ctx, neg = torch.randn(1, 77, 32), torch.randn(1, 77, 32)
    batched = refine_latents(ref, noised, ctx, neg, chunk=16, overlap=4, steps=2, seed=1)
    one_by_one = refine_latents(ref, noised, ctx, neg, chunk=16, overlap=4, steps=2, seed=1, chunk_batch=1)
    torch.testing.assert_close(batched, one_by_one, rtol=1e-4, atol=1e-4)
