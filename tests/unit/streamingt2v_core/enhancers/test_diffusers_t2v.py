"""Second refiner family: a diffusers UNet3DConditionModel T2V model (zeroscope-like) with its own scheduler."""
import json

import pytest
import torch

from streamingt2v_core.blending.sdedit import plan_canvas, refine_latents, refine_video
from streamingt2v_core.enhancers.diffusers_t2v import DiffusersT2VRefiner
from streamingt2v_core.enhancers.load import load_refiner


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


def write_tiny_t2v_folder(folder):
    """A diffusers text-to-video folder as zeroscope ships it (model_index.json, unet/, scheduler/, vae/,
    text_encoder/, tokenizer/), every part tiny: CLIP text width 32 = the UNet's cross-attention width,
    an AutoencoderKL with 2 levels (latents at half the pixel size), a character-level CLIP BPE vocabulary."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tiny_unet().save_pretrained(folder / "unet")
    ddim("v_prediction").save_pretrained(folder / "scheduler")
    torch.manual_seed(1)
    AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                  norm_num_groups=32).save_pretrained(folder / "vae")
    torch.manual_seed(2)
    CLIPTextModel(CLIPTextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                                 pad_token_id=1)).save_pretrained(folder / "text_encoder")
    tok_dir = folder / "tokenizer"
    tok_dir.mkdir()
    letters = "abcdefghijklmnopqrstuvwxyz,"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in letters:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77,
                  pad_token="<|endoftext|>").save_pretrained(tok_dir)
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "TextToVideoSDPipeline", "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet3DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}))
    return folder


def test_diffusers_folder_refines_pixels(tmp_path):
    """The second family end to end on pixels: prompt through its CLIP text encoder, frames through its VAE,
    blended SDEdit with its own scheduler, decoded and cropped; every frame kept, a seed reproduces the video."""
    ref = load_refiner(write_tiny_t2v_folder(tmp_path))
    assert ref.family == "diffusers" and ref.prediction_type == "v_prediction"
    assert ref.vae is not None and ref.text_encoder is not None and ref.tokenizer is not None
    ctx, neg = ref.encode_prompt("a red ball, rolling")
    assert ctx.shape == neg.shape == (1, 77, 32) and not torch.equal(ctx, neg)

    canvas = (32, 48)  # latents 16x24
    images = torch.rand(13, 24, 32, 3, generator=torch.Generator().manual_seed(4))
    (rh, rw), _ = plan_canvas(24, 32, canvas)
    kw = dict(strength_step=600, steps=2, chunk=8, overlap=3, canvas=canvas)  # chunks [0, 8) and [5, 13)
    seen = []
    out = refine_video(ref, images, "a red ball, rolling", "", seed=9, callback=lambda i, n, x0: seen.append(x0.shape),
                       **kw)
    assert (rh, rw) == (32, 43) and out.shape == (13, rh, rw, 3)
    assert seen == [(1, 4, 13, 16, 24)] * 2  # every solver step sees the whole-video latent
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    again = refine_video(ref, images, "a red ball, rolling", "", seed=9, **kw)
    torch.testing.assert_close(out, again, rtol=0, atol=0)  # a seed reproduces the video
    other = refine_video(ref, images, "a red ball, rolling", "", seed=10, **kw)
    assert not torch.equal(out, other)
    padded = refine_video(ref, images, "a red ball, rolling", "", seed=9, crop=False, **kw)
    assert padded.shape == (13, *canvas, 3)


@pytest.mark.parametrize("part, key, shape", [
    ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight", (33, 32)),
    ("text_encoder", "encoder.layers.0.self_attn.q_proj.weight", (33, 32)),
    ("vae", "decoder.conv_in.weight", (65, 4, 3, 3)),
])
def test_diffusers_folder_misshaped_tensor_names_file_key_shapes_and_fix(tmp_path, part, key, shape):
    """diffusers and transformers raise a bare RuntimeError on a size mismatch; the loader names the file,
    the key with expected vs found shape and the fix instead."""
    from safetensors.torch import load_file, save_file

    from streamingt2v_core.enhancers.load import RefinerLoadError

    folder = write_tiny_t2v_folder(tmp_path)
    (path,) = (folder / part).glob("*.safetensors")
    state = load_file(str(path))
    expected = list(state[key].shape)
    state[key] = torch.zeros(shape)
    save_file(state, str(path), metadata={"format": "pt"})
    with pytest.raises(RefinerLoadError) as err:
        load_refiner(folder)
    msg = str(err.value)
    assert msg.startswith(f"{path}: 1 tensor(s) have the wrong shape"), msg
    assert f"{key}: expected {expected}, found {list(shape)}" in msg
    assert "Fix: " in msg and "config.json" in msg


def test_guidance_rows_one_call_each_equal_the_batched_rows():
    """rows_together=False (the refiner node's low-vram plan) runs the positive and negative rows as two UNet
    calls: the same x0 and the same refined latent as one call of both rows, with half the rows per call."""
    refiner = DiffusersT2VRefiner(tiny_unet(), ddim("v_prediction"))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 6, 8, 8, generator=g)
    ctx, neg = torch.randn(1, 77, 32, generator=g), torch.randn(1, 77, 32, generator=g)
    rows = []
    hook = refiner.unet.register_forward_pre_hook(lambda _m, a: rows.append(a[0].shape[0]))
    try:
        together = refiner.predict_x0(x, torch.tensor([500]), ctx, neg, 7.5, 0.2)
        assert rows == [4]
        apart = refiner.predict_x0(x, torch.tensor([500]), ctx, neg, 7.5, 0.2, rows_together=False)
        assert rows == [4, 2, 2]
    finally:
        hook.remove()
    torch.testing.assert_close(apart, together, rtol=0, atol=1e-5)
    assert (together - refiner.predict_x0(x, torch.tensor([500]), ctx, neg, 3.0, 0.2)).abs().max() > 1e-3
    noised = torch.randn(1, 4, 40, 8, 8, generator=g)
    a = refine_latents(refiner, noised, ctx, neg, chunk=16, overlap=4, steps=2, seed=1)
    b = refine_latents(refiner, noised, ctx, neg, chunk=16, overlap=4, steps=2, seed=1, rows_together=False)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-4)
