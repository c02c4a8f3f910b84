"""t2v.cam: the CAM merger against per-pixel temporal attention written out, its locality and zero start;
the conditioning-frame encoder; the CAM reads only the first Fc noisy frames."""
import math

import torch
import torch.nn.functional as F

from streamingt2v_core.t2v.cam import CAMMerger, ConditioningFrameEncoder


def random_merger(channels=128):
    torch.manual_seed(0)
    m = CAMMerger(channels).eval()
    with torch.no_grad():
        for p in m.temporal_transformer.proj_out.parameters():
            p.normal_(0, 0.05)  # official init is zero (identity): make it do something
    return m


def merger_by_hand(m, base, cam, batch):
    """Per video and pixel: the F base frames (GroupNorm over C,F,H,W, then P_in) attend, in heads of 64
    channels, to the Fc CAM frames at that pixel; P_out of the result is added."""
    tt = m.temporal_transformer
    att = tt.attention
    bf, c, h, w = base.shape
    f, fc = bf // batch, cam.shape[0] // batch
    out = base.clone()
    for v in range(batch):
        vid = base[v * f:(v + 1) * f]  # F C H W
        normed = F.group_norm(vid.permute(1, 0, 2, 3)[None], 32, tt.norm.weight, tt.norm.bias, tt.norm.eps)[0]
        for i in range(h):
            for j in range(w):
                q_in = tt.proj_in(normed[:, :, i, j].T)  # F C
                kv = cam[v * fc:(v + 1) * fc, :, i, j]  # Fc C
                q, k, val = att.to_q(q_in), att.to_k(kv), att.to_v(kv)
                heads = []
                for hd in range(att.heads):
                    s = slice(hd * 64, (hd + 1) * 64)
                    weights = torch.softmax(q[:, s] @ k[:, s].T / math.sqrt(64), dim=-1)
                    heads.append(weights @ val[:, s])
                out[v * f:(v + 1) * f, :, i, j] += tt.proj_out(att.to_out[0](torch.cat(heads, dim=1)))
    return out


@torch.no_grad()
def test_merger_equals_per_pixel_attention():
    m = random_merger()
    g = torch.Generator().manual_seed(1)
    base, cam = torch.randn(2 * 4, 128, 3, 2, generator=g), torch.randn(2 * 2, 128, 3, 2, generator=g)
    out = m(base, cam, 2)
    torch.testing.assert_close(out, merger_by_hand(m, base, cam, 2), rtol=1e-4, atol=1e-5)
    assert (out - base).abs().max() > 1e-3


@torch.no_grad()
def test_merger_is_local_in_space_and_per_video():
    m = random_merger()
    g = torch.Generator().manual_seed(2)
    base, cam = torch.randn(2 * 4, 128, 3, 3, generator=g), torch.randn(2 * 2, 128, 3, 3, generator=g)
    ref = m(base, cam, 2)
    other = cam.clone()
    other[2:, :, 1, 2] += 1.0  # the second video's CAM features at one pixel
    diff = (m(base, other, 2) - ref).abs().amax(dim=1)  # (B*F, H, W)
    assert diff[4:, 1, 2].min() > 1e-4
    diff[4:, 1, 2] = 0
    assert diff.max() <= 1e-6


@torch.no_grad()
def test_fresh_merger_changes_nothing():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4, 64, 2, 2, generator=g)
    assert torch.equal(CAMMerger(64)(base, torch.randn(2, 64, 2, 2, generator=g), 1), base)


@torch.no_grad()
def test_conditioning_frame_encoder_shapes_and_zero_start():
    enc = ConditioningFrameEncoder([8, 16, 16, 32], 24)
    assert len(enc.blocks) == 6  # a conv and a stride-2 conv per level after the first
    x = torch.rand(2, 3, 64, 48) * 2 - 1
    out = enc(x)
    assert out.shape == (2, 24, 8, 6) and torch.equal(out, torch.zeros_like(out))


@torch.no_grad()
def test_cam_reads_only_the_first_cond_frames(tiny_model):
    g = torch.Generator().manual_seed(4)
    cfg = tiny_model.config
    sample = torch.randn(1, 4, cfg.chunk_frames, 8, 8, generator=g)
    cond = torch.rand(1, cfg.cond_frames, 3, 64, 64, generator=g) * 2 - 1
    text = torch.randn(1, 77, cfg.context_dim, generator=g)
    t = torch.tensor(400)
    skips, mid = tiny_model.cam(sample, t, text, cond)
    assert len(skips) == 12 and mid.shape[0] == cfg.cond_frames
    later = sample.clone()
    later[:, :, cfg.cond_frames:] = 0
    skips2, mid2 = tiny_model.cam(later, t, text, cond)
    assert torch.equal(mid, mid2) and all(torch.equal(a, b) for a, b in zip(skips, skips2))
    emb = tiny_model.cam.encode_cond(cond)
    assert torch.equal(tiny_model.cam(sample, t, text, None, emb)[1], mid)
