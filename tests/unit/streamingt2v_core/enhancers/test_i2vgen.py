"""Third enhancer family: I2VGen-XL, the official StreamingSVD enhancement (reference/official_streamingsvd.md s. 6),
on a tiny random-weight model built from diffusers' / transformers' own config classes (tests/support/i2vgen_tiny)."""
import copy
import json

import pytest
import torch

from streamingt2v_core.blending.cuts import chunk_starts
from streamingt2v_core.common.weights import CheckpointError
from streamingt2v_core.enhancers.i2vgen.enhance import chunk_layout, enhance_latents, enhance_video, sdedit_begin
from streamingt2v_core.enhancers.i2vgen.model import Keyframe
from streamingt2v_core.enhancers.load import load_refiner
from tests.support import i2vgen_tiny

pytestmark = pytest.mark.i2vgen


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return i2vgen_tiny.enhancer(tmp_path_factory.mktemp("tiny_i2vgen"))


def _key(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return model.encode_keyframe(torch.rand(3, *i2vgen_tiny.CANVAS, generator=g), g)


def test_loads_as_its_own_family_with_the_hub_scheduler(model):
    assert model.family == "i2vgen-xl" and type(model.scheduler).__name__ == "DDIMScheduler"
    assert model.prediction_type == "v_prediction" and model.latent_factor == 2
    assert model.scheduler.config.rescale_betas_zero_snr and model.scheduler.config.timestep_spacing == "leading"


def test_model_call_equals_diffusers_unet(model):
    """The guided output is diffusers' I2VGenXLUNet on the pipeline's rows: [negative, positive], zero image
    embedding on the negative row, the keyframe latent + frame position mask, fps on both."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 5, 8, 16, generator=g)
    ctx, neg = model.encode_prompt("high quality", "blurry")
    key = _key(model)
    ramp = torch.cat([key.latent] + [torch.full_like(key.latent, k / 4) for k in range(1, 5)], dim=2)
    emb = key.embedding.reshape(1, -1)
    t = torch.tensor(500)
    with torch.no_grad():
        both = model.unet(torch.cat([x, x]), t, fps=torch.tensor([38, 38]), image_latents=torch.cat([ramp, ramp]),
                          image_embeddings=torch.cat([torch.zeros_like(emb), emb]),
                          encoder_hidden_states=torch.cat([neg, ctx])).sample
    u, y = both.chunk(2)
    torch.testing.assert_close(model.guided_output(x, t, ctx, neg, key, 9.0, 38), u + 9.0 * (y - u), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.guided_output(x, t, ctx, neg, key, 9.0, 38, rows_together=False),
                               u + 9.0 * (y - u), rtol=1e-4, atol=1e-4)  # batch-size rounding, times 9
    torch.testing.assert_close(model.guided_output(x, t, ctx, neg, key, 1.0, 38), y, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(model.guided_output(x, t, ctx, neg, key, 9.0, 8), u + 9.0 * (y - u))  # fps is read


def test_prompt_is_the_penultimate_layer_through_the_final_norm(model):
    """clip_skip=1 (the official call): the same as a copy of the encoder without its last layer."""
    ctx, neg = model.encode_prompt("high quality", "blurry")
    short = copy.deepcopy(model.text_encoder)
    del short.encoder.layers[-1]
    ids = model.tokenizer(["high quality", "blurry"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = short(ids).last_hidden_state
    torch.testing.assert_close(torch.cat([ctx, neg]), ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ctx, neg)


def test_keyframe_matches_the_pipelines_image_encodings(model):
    """Image embedding and image latents as diffusers' I2VGenXLPipeline computes them from the same pixels
    (its latent_dist.sample() draws from the global RNG; ours from the generator, same stream)."""
    from diffusers import I2VGenXLPipeline

    pipe = I2VGenXLPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                            image_encoder=model.image_encoder, feature_extractor=model.feature_extractor,
                            unet=model.unet, scheduler=model.scheduler)
    pipe._guidance_scale = 9.0
    img = torch.rand(3, *i2vgen_tiny.CANVAS, generator=torch.Generator().manual_seed(4))
    key = model.encode_keyframe(img, torch.Generator().manual_seed(7))
    emb = pipe._encode_image(model.clip_pixels(img), "cpu", 1)
    torch.testing.assert_close(emb, torch.cat([torch.zeros_like(key.embedding), key.embedding]))
    torch.manual_seed(7)
    lat = pipe.prepare_image_latents(img[None] * 2 - 1, "cpu", 6, 1)
    torch.testing.assert_close(lat[:1], model.image_latents(key, 6), rtol=1e-5, atol=1e-6)


def _official_single_chunk(model, images, anchor, prompt, negative, steps, strength, guidance, fps, seed):
    """The official pipeline's algorithm, restated from the reference for one chunk: text rows [neg, pos], keyframe
    from the anchor, video posterior x scale, add_noise at timesteps[t_start], DDIM eta 0 on (F, C, h, w)."""
    gen = torch.Generator().manual_seed(seed)
    ids = model.tokenizer([prompt, negative], padding="max_length", max_length=77, return_tensors="pt").input_ids
    hidden = model.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    text = model.text_encoder.final_layer_norm(hidden)
    pos, neg = text[:1], text[1:]
    emb = model.image_encoder(model.clip_pixels(anchor)).image_embeds
    scale = model.vae.config.scaling_factor
    a = model.vae.encode(anchor[None] * 2 - 1).latent_dist
    img_lat = (a.mean + a.std * torch.randn(a.mean.shape, generator=gen)) * scale
    frames = images.shape[0]
    img_lat = torch.cat([img_lat[:, :, None]] + [torch.ones_like(img_lat[:, :, None]) * (k + 1) / (frames - 1)
                                                  for k in range(frames - 1)], dim=2)
    sched = type(model.scheduler).from_config(model.scheduler.config)
    sched.set_timesteps(steps)
    t_start = steps - int(steps * strength)
    timesteps = sched.timesteps[t_start:]
    px = images.permute(0, 3, 1, 2) * 2 - 1
    post = [model.vae.encode(px[i:i + 1]).latent_dist for i in range(frames)]
    init = torch.cat([(d.mean + d.std * torch.randn(d.mean.shape, generator=gen)) * scale for d in post])
    lat = sched.add_noise(init, torch.randn(init.shape, generator=gen), timesteps[:1])  # (F, C, h, w)
    for t in timesteps:
        video = lat.permute(1, 0, 2, 3)[None]
        out = model.unet(torch.cat([video, video]), t, fps=torch.tensor([fps, fps]),
                         image_latents=torch.cat([img_lat, img_lat]),
                         image_embeddings=torch.cat([torch.zeros_like(emb), emb]),
                         encoder_hidden_states=torch.cat([neg, pos])).sample
        u, y = out.chunk(2)
        eps = (u + guidance * (y - u))[0].permute(1, 0, 2, 3)
        lat = sched.step(eps, t, lat, eta=0.0).prev_sample
    dec = torch.cat([model.vae.decode(lat[i:i + 1] / scale).sample for i in range(frames)])
    return ((dec.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1), timesteps


@torch.no_grad()
def test_one_chunk_without_blending_equals_the_official_algorithm(model):
    g = torch.Generator().manual_seed(5)
    images = torch.rand(6, *i2vgen_tiny.CANVAS, 3, generator=g)
    anchor = torch.rand(1, *i2vgen_tiny.CANVAS, 3, generator=g)
    seen = []
    ours = enhance_video(model, images, anchor, "high quality", "blurry", steps=30, strength=0.97, guidance=9.0,
                         fps=38, blending=False, seed=11, callback=lambda i, n, x: seen.append((i, n)))
    ref, timesteps = _official_single_chunk(model, images, anchor[0].permute(2, 0, 1), "high quality", "blurry",
                                            30, 0.97, 9.0, 38, 11)
    assert sdedit_begin(30, 0.97) == 1 and len(timesteps) == 29 == len(seen)  # starts at step index 1
    assert int(timesteps[0]) == 925  # leading spacing + offset 1: 958, 925, ..., 1; SDEdit skips 958
    assert ours.shape == images.shape
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    other = enhance_video(model, images, anchor, "high quality", "blurry", steps=30, strength=0.97, blending=False,
                          seed=12)
    assert (other - ours).abs().max() > 1e-3  # the seed sets the noise


@torch.no_grad()
def test_blending_takes_each_frame_from_exactly_one_chunk_after_every_step(model):
    frames, chunk, overlap = 21, 8, 3   # not of the official form: chunk_starts spreads the overlaps
    starts = chunk_starts(frames, chunk, overlap)
    clean = torch.randn(1, 4, frames, 8, 16, generator=torch.Generator().manual_seed(2))
    keys = [_key(model, k) for k in range(len(starts))]
    ctx, neg = model.encode_prompt("high quality", "blurry")
    checked = []

    def trace(i, n, x, stepped, cut):
        for f in range(frames):
            holders = [k for k, s in enumerate(starts) if s <= f < s + chunk]
            same = [k for k in holders if torch.equal(x[0, :, f], stepped[k, :, f - starts[k]])]
            assert len(same) == 1, (i, f, holders, same)
            owner = max(k for k in holders if k == 0 or f >= starts[k] + int(cut[k - 1]))  # the official overwrite
            assert same == [owner], (i, f, same, owner)
        checked.append(i)

    out = enhance_latents(model, clean, keys, ctx, neg, torch.Generator().manual_seed(0), chunk, overlap, steps=5,
                          strength=1.0, seed=3, trace=trace)
    assert checked == list(range(5)) and out.shape == clean.shape and torch.isfinite(out).all()


@torch.no_grad()
def test_cut_frequencies_match_the_official_rule(model):
    """Official: r = random.randint(0, 11) per boundary and step; overlap frame j takes the later chunk with
    probability (j + 1) / 12. Counted on the official layout (90 = 26 * 2 + 38 frames) within 4 sigma."""
    frames, chunk, overlap, steps = 90, 38, 12, 80
    starts = chunk_starts(frames, chunk, overlap)
    assert starts == [0, 26, 52]
    clean = torch.randn(1, 4, frames, 2, 2, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(9)
    keys = [model.encode_keyframe(torch.rand(3, 4, 4, generator=g), g) for _ in starts]
    ctx, neg = model.encode_prompt("a", "b")
    later = torch.zeros(overlap)
    hist = torch.zeros(overlap)

    def trace(i, n, x, stepped, cut):
        for b, s in enumerate(starts[1:], start=1):
            hist[int(cut[b - 1])] += 1
            for j in range(overlap):
                later[j] += float(torch.equal(x[0, :, s + j], stepped[b, :, j]))

    enhance_latents(model, clean, keys, ctx, neg, torch.Generator().manual_seed(0), chunk, overlap, steps=steps,
                    strength=1.0, guidance=1.0, seed=4, trace=trace)
    n = steps * (len(starts) - 1)
    p = (torch.arange(overlap) + 1) / overlap
    assert ((later - n * p).abs() <= 4 * (n * p * (1 - p)).sqrt() + 1e-9).all(), later.tolist()
    q = 1 / overlap
    assert ((hist - n * q).abs() <= 4 * (n * q * (1 - q)) ** 0.5).all(), hist.tolist()
    assert hist.sum() == n


@pytest.mark.parametrize("frames", [13, 16])  # 13 = (8 - 3)(2 - 1) + 8 (official form), 16 is not
@torch.no_grad()
def test_every_frame_is_kept(model, frames):
    images = torch.rand(frames, 12, 20, 3, generator=torch.Generator().manual_seed(frames))  # resized to the canvas
    out = enhance_video(model, images, steps=2, strength=1.0, chunk=8, overlap=3, seed=1)
    assert out.shape == (frames, *i2vgen_tiny.CANVAS, 3) and torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    again = enhance_video(model, images, steps=2, strength=1.0, chunk=8, overlap=3, seed=1)
    torch.testing.assert_close(out, again, rtol=0, atol=0)  # a seed reproduces the video


def test_chunk_layout_covers_every_frame_at_the_official_sizes():
    for frames in (38, 64, 90, 100, 200):
        starts = chunk_layout(frames, 38, 12)
        assert starts[0] == 0 and starts[-1] + min(38, frames) == frames
        assert all(b - a <= 26 for a, b in zip(starts, starts[1:]))  # overlaps >= 12
    assert chunk_layout(90, 38, 12) == [0, 26, 52] and chunk_layout(5, 38, 0) == [0]


def test_bad_settings_and_keyframes_fail_before_any_model_call(model):
    clean = torch.zeros(1, 4, 21, 8, 16)
    ctx, neg = model.encode_prompt("a", "b")
    with pytest.raises(ValueError, match="1 keyframes for 4 chunks"):
        enhance_latents(model, clean, [Keyframe(torch.zeros(1, 1, 32), torch.zeros(1, 4, 1, 8, 16))], ctx, neg,
                        torch.Generator(), 8, 3, steps=2)
    with pytest.raises(ValueError, match="strength: 0.01 of 30 steps runs no step"):
        enhance_video(model, torch.rand(4, 16, 32, 3), strength=0.01)
    with pytest.raises(ValueError, match=r"IMAGE batch \(T, H, W, 3\)"):
        enhance_video(model, torch.rand(4, 3, 16, 32))


def test_a_broken_folder_names_what_is_missing(tmp_path):
    folder = i2vgen_tiny.write_folder(tmp_path / "tiny")
    cfg = folder / "scheduler" / "scheduler_config.json"
    data = json.loads(cfg.read_text())
    cfg.write_text(json.dumps(dict(data, _class_name="EulerDiscreteScheduler")))
    with pytest.raises(CheckpointError, match="names EulerDiscreteScheduler.*set _class_name to DDIMScheduler"):
        load_refiner(folder)
    import shutil

    shutil.rmtree(folder / "image_encoder")
    with pytest.raises(CheckpointError, match="lacks image_encoder/"):
        load_refiner(folder)


@pytest.mark.parametrize("part, key", [("unet", "cross_attention_dim"), ("text_encoder", "intermediate_size")])
def test_weights_that_do_not_fit_their_config_name_the_part(tmp_path, part, key):
    folder = i2vgen_tiny.write_folder(tmp_path / "tiny")
    cfg = folder / part / "config.json"
    data = json.loads(cfg.read_text())
    cfg.write_text(json.dumps(dict(data, **{key: data[key] + 8})))
    with pytest.raises(CheckpointError, match=f"{part}: the weights do not fit the config.json beside them"):
        load_refiner(folder)
