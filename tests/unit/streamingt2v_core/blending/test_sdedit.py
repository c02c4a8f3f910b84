"""Pixel side of the refiner: resize/pad/encode/refine/decode/crop, end to end on the tiny model."""
import pytest
import torch

from streamingt2v_core.blending.sdedit import check_frame_size, plan_canvas, refine_video
from streamingt2v_core.common.frames import resize_frames
from streamingt2v_core.enhancers.load import load_refiner
from tools import make_tiny_refiner

TINY_CANVAS = (80, 128)  # latent 10x16: h = 2 mod 8, w = 0 mod 8, like 720x1280 -> 90x160


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_refiner(make_tiny_refiner.write(tmp_path_factory.mktemp("tiny_v2v"), "converted"))


def test_official_canvas_plan():
    (h, w), box = plan_canvas(256, 256, (720, 1280))
    assert (h, w) == (720, 720) and box == (0, 280, 720, 720)  # 280 px black bars left and right
    (h, w), box = plan_canvas(320, 576, (720, 1280))  # wider than 16:9: fits the width, bars top and bottom
    assert (h, w) == (711, 1280) and box == (4, 0, 711, 1280)
    with pytest.raises(ValueError, match="aspect ratio"):
        check_frame_size(1, 4000, (720, 1280))


def test_bicubic_resize_is_pils():
    """Official frames are resized by PIL's default (bicubic, a = -0.5); torch's antialiased bicubic is that kernel."""
    import numpy as np
    from PIL import Image

    def both(img):
        pil = torch.from_numpy(np.array(Image.fromarray(img.numpy()).resize((90, 90), Image.BICUBIC))).float()
        ours = resize_frames(img.permute(2, 0, 1)[None].float(), 90, 90)[0].permute(1, 2, 0).round().clamp(0, 255)
        return (ours - pil).abs()

    ramp = torch.linspace(0, 255, 32)
    smooth = (0.5 * ramp[None, :, None] + 0.5 * ramp[:, None, None]).expand(32, 32, 3).round().to(torch.uint8)
    assert both(smooth).max() <= 1  # PIL rounds its intermediate pass to uint8
    noise = (torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(0)) * 255).round().to(torch.uint8)
    assert both(noise).mean() < 0.5  # PIL also clips the intermediate overshoot; torch keeps it


def test_refine_video_keeps_41_frames_and_crops(tiny):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(41, 32, 32, 3, generator=g)
    seen = []
    out = refine_video(tiny, images, "a cat", "", strength_step=600, steps=2, seed=3, canvas=TINY_CANVAS,
                       callback=lambda i, n, x0: seen.append((i, n, x0.shape)))
    assert out.shape == (41, 80, 80, 3)  # cropped back to the resized content
    assert [s[:2] for s in seen] == [(0, 2), (1, 2)] and seen[0][2] == (1, 4, 41, 10, 16)
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    padded = refine_video(tiny, images[:16], "a cat", "", steps=1, seed=3, canvas=TINY_CANVAS, crop=False)
    assert padded.shape == (16, 80, 128, 3)
    again = refine_video(tiny, images[:16], "a cat", "", steps=1, seed=3, canvas=TINY_CANVAS, crop=False)
    torch.testing.assert_close(padded, again, rtol=0, atol=0)  # a seed reproduces the video
    other = refine_video(tiny, images[:16], "a cat", "", steps=1, seed=4, canvas=TINY_CANVAS, crop=False)
    assert not torch.equal(padded, other)


@pytest.mark.parametrize("hw, content", [((32, 48), (80, 120)), ((48, 32), (80, 53))], ids=["landscape", "portrait"])
def test_refine_video_non_square(tiny, hw, content):
    """Non-square frames fill the canvas height (80) with their aspect; the output is cropped to exactly the
    resized content that plan_canvas predicts, at the box it predicts; crop=False gives the whole canvas."""
    images = torch.rand(12, *hw, 3, generator=torch.Generator().manual_seed(7))
    (rh, rw), (top, left, bh, bw) = plan_canvas(*hw, TINY_CANVAS)
    assert (rh, rw) == (bh, bw) == content
    kw = dict(steps=1, seed=2, chunk=8, overlap=4, canvas=TINY_CANVAS)  # two chunks, one overlap
    out = refine_video(tiny, images, "a cat", "", **kw)
    assert out.shape == (12, rh, rw, 3)
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    padded = refine_video(tiny, images, "a cat", "", crop=False, **kw)
    assert padded.shape == (12, *TINY_CANVAS, 3)
    # the crop is the content box of the same refined canvas
    torch.testing.assert_close(out, padded[:, top:top + rh, left:left + rw], rtol=0, atol=0)


class _FrameEcho:
    """Refiner stand-in whose x0 is its input: the solver, chunking and stitching run for real, cheaply."""

    family = "ms-vid2vid"

    def __init__(self):
        from streamingt2v_core.enhancers.ms_vid2vid.schedule import VPSchedule

        self.schedule, self.calls = VPSchedule(), []

    def check_latent_size(self, h, w):
        pass

    def predict_x0(self, x_t, t, context, negative_context, guidance=7.5, rescale=0.2, rows_together=True):
        self.calls.append(tuple(x_t.shape))
        return x_t.float()

    def sample(self, noised, x0_fn, steps, t_start, seed=0, brownian_noise=None):
        from streamingt2v_core.enhancers.ms_vid2vid.solver import sdedit_solve

        return sdedit_solve(self.schedule, noised, x0_fn, steps, t_start, seed, brownian_noise)


@pytest.mark.parametrize("frames", [16, 24, 40, 41, 57, 240])
def test_refine_latents_keeps_every_frame(frames):
    from streamingt2v_core.blending.cuts import chunk_starts
    from streamingt2v_core.blending.sdedit import refine_latents

    echo = _FrameEcho()
    noised = torch.randn(1, 4, frames, 2, 2, generator=torch.Generator().manual_seed(frames))
    ctx = torch.zeros(1, 77, 8)
    steps = []
    out = refine_latents(echo, noised, ctx, ctx, steps=3, seed=1, callback=lambda i, n, x0: steps.append(x0.shape))
    assert out.shape == noised.shape and torch.isfinite(out).all()
    assert steps == [noised.shape] * 3
    n_chunks = len(chunk_starts(frames))
    assert echo.calls == [(n_chunks, 4, min(24, frames), 2, 2)] * 3  # all chunks of a step in one call
    echo.calls.clear()
    refine_latents(echo, noised, ctx, ctx, steps=3, seed=1, chunk_batch=2)
    assert len(echo.calls) == 3 * -(-n_chunks // 2)


BAD_REFINES = [
    ("context batch 2 of 3", dict(noised=torch.zeros(3, 4, 16, 2, 2), context=torch.zeros(2, 77, 8)),
     r"context.*batch 2.*3"),
    ("negative width", dict(negative_context=torch.zeros(1, 77, 16)),
     r"negative_context.*\(1, 77, 16\).*context.*\(1, 77, 8\)"),
    ("negative batch", dict(noised=torch.zeros(2, 4, 16, 2, 2), negative_context=torch.zeros(3, 77, 8)),
     r"negative_context.*batch 3.*2"),
    ("context 2-D", dict(context=torch.zeros(77, 8)), r"context.*\(1, tokens, width\).*\(77, 8\)"),
    ("integer latent", dict(noised=torch.zeros(1, 4, 16, 2, 2, dtype=torch.long)), r"noised.*torch.int64"),
    ("no steps", dict(steps=0), r"steps.*0.*at least 1"),
    ("t_start below 0", dict(t_start=-1), r"t_start.*-1"),
]


@pytest.mark.parametrize("kw, message", [c[1:] for c in BAD_REFINES], ids=[c[0] for c in BAD_REFINES])
def test_refine_latents_refuses_inconsistent_inputs(kw, message):
    from streamingt2v_core.blending.sdedit import refine_latents

    echo = _FrameEcho()
    args = dict(noised=torch.zeros(1, 4, 16, 2, 2), context=torch.zeros(1, 77, 8), negative_context=torch.zeros(1, 77, 8))
    args.update(kw)
    with pytest.raises(ValueError, match=message):
        refine_latents(echo, args.pop("noised"), args.pop("context"), args.pop("negative_context"), **args)
    assert echo.calls == []  # refused before any denoiser call


BAD_IMAGES = [
    ("channels first", torch.rand(4, 3, 32, 32), r"images.*\(4, 3, 32, 32\).*permute\(0, 2, 3, 1\)"),
    ("uint8", (torch.rand(4, 32, 32, 3) * 255).to(torch.uint8), r"images.*torch.uint8.*/ 255"),
    ("0..255 floats", torch.rand(4, 32, 32, 3) * 255, r"images.*\[0, 1\]"),
    ("[-1, 1] floats", torch.rand(4, 32, 32, 3) * 2 - 1, r"images.*\[0, 1\]"),
    ("no frames", torch.rand(0, 32, 32, 3), r"images.*no frames"),
]


@pytest.mark.parametrize("images, message", [c[1:] for c in BAD_IMAGES], ids=[c[0] for c in BAD_IMAGES])
def test_refine_video_refuses_wrong_images(tiny, monkeypatch, images, message):
    monkeypatch.setattr(tiny, "encode_prompt", lambda *a, **k: pytest.fail("the prompt was encoded before the check"))
    with pytest.raises(ValueError, match=message):
        refine_video(tiny, images, "a cat", "", steps=1, canvas=TINY_CANVAS)


def test_refine_video_refuses_a_strength_outside_the_schedule(tiny, monkeypatch):
    monkeypatch.setattr(tiny, "encode_prompt", lambda *a, **k: pytest.fail("the prompt was encoded before the check"))
    with pytest.raises(ValueError, match=r"strength_step.*0.*at least 1"):
        refine_video(tiny, torch.rand(4, 32, 32, 3), "a cat", "", strength_step=0, steps=1, canvas=TINY_CANVAS)
