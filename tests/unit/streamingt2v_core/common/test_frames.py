"""Frame fitting (streamingt2v_core.common.frames): the node's center crop and stretch, and the refiner's
fit / pad / crop helpers."""
import pytest
import torch
import torch.nn.functional as F

from streamingt2v_core.common.frames import FIT_MODES, center_box, crop_frames, fit_frames, fit_size, pad_frames


def node_resize(x: torch.Tensor, width: int, height: int, mode: str) -> torch.Tensor:
    """nodes/init.py resize_frames as it was (on (N, 3, H, W)): the expectation."""
    h, w = x.shape[-2:]
    if mode == "center crop":
        scale = max(height / h, width / w)
        sh, sw = max(height, round(h * scale)), max(width, round(w * scale))
        x = F.interpolate(x, size=(sh, sw), mode="bicubic", antialias=True, align_corners=False)
        top, left = (sh - height) // 2, (sw - width) // 2
        x = x[..., top:top + height, left:left + width]
    else:
        x = F.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return x.clamp(0, 1)


@pytest.mark.parametrize("size, target", [((48, 80), (64, 64)), ((80, 48), (64, 32)), ((37, 53), (40, 24)),
                                          ((64, 64), (64, 64)), ((100, 30), (32, 96))])
@pytest.mark.parametrize("mode", FIT_MODES)
def test_fit_frames_equals_the_node_resize(size, target, mode):
    x = torch.rand(3, 3, *size, generator=torch.Generator().manual_seed(sum(size)))
    width, height = target
    out = fit_frames(x, width, height, mode)
    assert out.shape == (3, 3, height, width)
    assert torch.equal(out, node_resize(x, width, height, mode))
    assert out.min() >= 0 and out.max() <= 1


def test_center_crop_keeps_the_middle_and_the_aspect():
    # a wide frame whose left and right quarters are black and the middle white: cropped to a square, the
    # middle is all that is left (a left- or right-aligned crop would show black)
    x = torch.zeros(1, 3, 32, 64)
    x[..., 16:48] = 1
    out = fit_frames(x, 32, 32, "center crop")
    assert out.shape == (1, 3, 32, 32) and torch.all(out[..., :, 2:-2] > 0.99)
    # stretch squeezes the black bars in instead
    stretched = fit_frames(x, 32, 32, "stretch")
    assert torch.all(stretched[..., :, :4] < 0.2) and torch.all(stretched[..., :, -4:] < 0.2)
    # a vertical gradient keeps its row order and range under a horizontal crop (no flip, no vertical shift)
    grad = torch.linspace(0, 1, 40).view(1, 1, 40, 1).expand(1, 3, 40, 80)
    out = fit_frames(grad, 40, 40, "center crop")
    torch.testing.assert_close(out, grad[..., :40], rtol=0, atol=1e-6)


def test_fit_frames_names_the_modes():
    with pytest.raises(ValueError, match="resize: 'pad'.*'center crop', 'stretch'"):
        fit_frames(torch.zeros(1, 3, 8, 8), 8, 8, "pad")


def test_fit_pad_crop_round_trip():
    assert fit_size(256, 256, 720, 1280) == (720, 720)
    box = center_box(720, 720, 720, 1280)
    assert box == (0, 280, 720, 720)
    x = torch.rand(2, 3, 720, 720)
    padded = pad_frames(x, box, 720, 1280, value=-1.0)
    assert padded.shape == (2, 3, 720, 1280) and torch.all(padded[..., :280] == -1)
    assert torch.equal(crop_frames(padded, box), x)
