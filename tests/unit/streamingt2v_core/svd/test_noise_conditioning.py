import pytest
import torch

from streamingt2v_core.svd import config
from streamingt2v_core.svd.conditioning import (CLIP_SIZE, cond_frames, control_frames, guidance_scale, guide,
                                                keep_new_frames, official_clip_input)
from streamingt2v_core.svd.noise import ChunkDraws


def test_draws_follow_the_global_rng_order():
    torch.manual_seed(5)
    want = [(torch.rand(1, 3, 16, 24), torch.randn(25, 4, 2, 3)) for _ in range(2)]
    draws = ChunkDraws(5, 16, 24)
    for u, n in want:
        got = draws.next()
        assert torch.equal(got.cond_aug_uniform, u) and torch.equal(got.init_noise, n)
    assert draws.chunks_drawn == 2


def test_draws_reject_sizes_off_the_latent_grid():
    with pytest.raises(ValueError):
        ChunkDraws(0, 60, 128)


def test_cond_frames_and_guidance():
    img, u = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    assert torch.allclose(cond_frames(img, u), torch.full_like(img, 0.02))
    s = guidance_scale()
    assert s.shape == (25,) and s[0] == 1.5 and s[-1] == 3.0
    uncond, cond = torch.zeros(50, 2), torch.ones(50, 2)  # two videos
    g = guide(uncond, cond)
    assert torch.equal(g[:25, 0], s) and torch.equal(g[25:, 0], s)


def test_frames_that_carry_over():
    chunk = torch.arange(25).view(25, 1)
    assert keep_new_frames(chunk).flatten().tolist() == list(range(7, 25))
    assert control_frames(chunk).flatten().tolist() == list(range(18, 25))
    assert keep_new_frames(chunk).shape[0] == config.NEW_FRAMES


def test_clip_input_squashes_and_normalises():
    x = torch.rand(2, 3, 64, 128) * 2 - 1
    out = official_clip_input(x)
    assert out.shape == (2, 3, CLIP_SIZE, CLIP_SIZE)
    flat = official_clip_input(torch.zeros(1, 3, 300, 500))  # mid-grey: (0.5 - mean) / std everywhere
    assert torch.allclose(flat[0, :, 0, 0], flat[0, :, 100, 200])


def test_clip_input_equals_kornia_resize():
    kornia = pytest.importorskip("kornia")
    from streamingt2v_core.svd.conditioning import CLIP_MEAN, CLIP_STD

    torch.manual_seed(0)
    for size in ((576, 1024), (64, 128), (300, 200)):
        x = torch.rand(1, 3, *size) * 2 - 1
        k = kornia.geometry.transform.resize(x, (224, 224), interpolation="bicubic", align_corners=True, antialias=True)
        k = kornia.enhance.normalize((k + 1) / 2, torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD))
        torch.testing.assert_close(official_clip_input(x), k, rtol=0, atol=2e-6)
