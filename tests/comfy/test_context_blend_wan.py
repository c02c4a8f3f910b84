"""Randomized blending on a real native ComfyUI video model, in-process: the tiny Wan 2.1 of
tools/make_tiny_wan.py built by ComfyUI's own loader, sampled by ComfyUI's own sampler
(comfy.sample.sample, what KSampler calls) with the context handler of RandomizedBlendContextWindows.

What the node's description promises is checked here on the model itself: core fuses the windows'
*denoised* outputs, and with one window per frame that equals fusing the model's raw prediction for eps,
v-prediction and flow alike (each turns into x0 frame by frame with the same x and sigma)."""
from __future__ import annotations

import pytest
import torch

from tests.support.comfy_inproc import import_comfy, import_pack

pytestmark = [pytest.mark.native_blend, pytest.mark.compat]

FRAMES, LENGTH, OVERLAP, STEPS = 12, 6, 3, 4  # latent frames: windows 0-5, 3-8, 6-11


@pytest.fixture(scope="module")
def cf():
    import_comfy()
    return import_pack("comfy_bridge.context_fuse")


@pytest.fixture(scope="module")
def wan(cf):
    import comfy.sd
    from tools import make_tiny_wan

    return comfy.sd.load_diffusion_model_state_dict(make_tiny_wan.draw(make_tiny_wan.wan_shapes(),
                                                                       make_tiny_wan.WAN_SEED))


def conditioning(seed: int):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 7, 4096, generator=g), {}]]


def sample(model, seed=5, cfg=4.0, callback=None):
    import comfy.sample

    latent = torch.zeros(1, 16, FRAMES, 4, 4)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample(model, noise, STEPS, cfg, "euler", "simple", conditioning(1), conditioning(2), latent,
                               denoise=1.0, seed=seed, callback=callback, disable_pbar=True)


def blend(cf, model, seed=33, length=LENGTH, overlap=OVERLAP):
    return cf.randomized_blend_windows(model, length, overlap, seed, "auto", "latent frames")


def test_the_tiny_wan_is_a_native_flow_model(wan):
    import comfy.model_sampling

    assert type(wan.model).__name__ == "WAN21"
    assert isinstance(wan.get_model_object("model_sampling"), comfy.model_sampling.CONST)


def test_same_seed_same_latents_another_seed_others(cf, wan):
    first = {}

    def first_x0(seed):
        return lambda step, x0, x, total: first.setdefault(seed, x0.clone()) if step == 0 else None

    a = sample(blend(cf, wan, seed=33), callback=first_x0(33))
    assert torch.equal(a, sample(blend(cf, wan, seed=33)))
    b = sample(blend(cf, wan, seed=34), callback=first_x0(34))
    assert not torch.equal(a, b)
    # at the first step (same input) the seed moves only frames inside the overlaps 3-5 and 6-8
    moved = (first[33] - first[34]).abs().amax(dim=(0, 1, 3, 4)) > 0
    assert moved[3:9].any() and not moved[:3].any() and not moved[9:].any()


def test_one_window_over_the_whole_video_is_sampling_without_windows(cf, wan):
    plain = sample(wan)
    assert torch.equal(sample(blend(cf, wan, length=FRAMES, overlap=OVERLAP)), plain)
    assert not torch.equal(sample(blend(cf, wan)), plain)  # real windows do change the result


def with_prediction(wan, kind: str):
    """The model with ComfyUI's own model sampling for `kind`, as core's ModelSamplingDiscrete node sets it."""
    import comfy.model_sampling as ms

    if kind == "flow":
        return wan
    base, pred = ms.ModelSamplingDiscrete, {"eps": ms.EPS, "v_prediction": ms.V_PREDICTION}[kind]
    patched = wan.clone()
    patched.add_object_patch("model_sampling", type("Sampling", (base, pred), {})(wan.model.model_config))
    return patched


@pytest.mark.parametrize("kind", ["eps", "v_prediction", "flow"])
def test_the_blended_denoised_is_the_owner_windows_raw_prediction(cf, wan, kind):
    """At every step, each frame of the sampler's x0 equals the model's raw output (eps, v or flow) of the one
    window that step_owners picks, turned into x0 by the model's own sampling: blending x0 is blending the
    raw prediction, with no averaging across windows."""
    from streamingt2v_core.blending.cuts import step_owners

    model = blend(cf, with_prediction(wan, kind))
    sampling = model.get_model_object("model_sampling")
    raw = []  # per model call: (window frames, raw output)

    def record(_module, _args, kwargs, out):
        window = kwargs["transformer_options"]["context_window"]
        frames = list(window.index_list)
        if out.shape[2] == len(frames) + 1:  # 0.33's causal_window_fix: one anchor frame before the window
            out = out[:, :, 1:]
        raw.append((frames, out.detach().clone()))

    steps = []

    def callback(step, x0, x, total):
        steps.append((step, x0.clone(), x.clone(), list(raw)))
        raw.clear()

    hook = wan.model.diffusion_model.register_forward_hook(record, with_kwargs=True)
    try:
        sample(model, cfg=1.0, callback=callback)  # cfg 1: ComfyUI skips the uncond row, one row per call
    finally:
        hook.remove()
    assert len(steps) == STEPS
    import comfy.samplers

    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", STEPS)  # what the sampler steps through
    spans_seen = set()
    for step, x0, x, calls in steps:
        spans = sorted((f[0], f[-1] + 1) for f, _ in calls)
        spans_seen.add(tuple(spans))
        owners = step_owners(FRAMES, spans, 33, step)
        by_span = {(f[0], f[-1] + 1): out for f, out in calls}
        sigma = sigmas[step]
        for frame in range(FRAMES):
            candidates = {span: sampling.calculate_denoised(sigma.reshape(1), out[:, :, frame - span[0]],
                                                            x[:, :, frame])
                          for span, out in by_span.items() if span[0] <= frame < span[1]}
            mine = spans[int(owners[frame])]
            torch.testing.assert_close(x0[:, :, frame], candidates[mine], rtol=1e-5, atol=1e-5,
                                       msg=f"{kind}: step {step} frame {frame} is not window {mine}'s")
            for span, other in candidates.items():
                if span != mine:  # windows see different neighbours, so their predictions differ
                    assert not torch.allclose(x0[:, :, frame], other, atol=1e-4), (kind, step, frame, span)
    assert spans_seen == {((0, 6), (3, 9), (6, 12))}
