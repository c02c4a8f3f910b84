"""common.attention: SDPAProcessor against diffusers' own processor, the context shared by a video's
frames, query slices, and no model-specific behaviour inside."""
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from streamingt2v_core.common.attention import SDPAProcessor, sliced_sdpa


def make_attention(query_dim=32, context_dim=24):
    torch.manual_seed(0)
    return Attention(query_dim=query_dim, cross_attention_dim=context_dim, heads=4, dim_head=8).eval()


@torch.no_grad()
def test_equals_diffusers_processor_for_self_and_cross_attention():
    attn = make_attention()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 10, 32, generator=g)
    ctx = torch.randn(6, 7, 24, generator=g)
    ref_cross = AttnProcessor2_0()(attn, x, ctx)
    ours_cross = SDPAProcessor()(attn, x, ctx)
    torch.testing.assert_close(ours_cross, ref_cross, rtol=1e-5, atol=1e-6)
    self_attn = make_attention(context_dim=None)
    torch.testing.assert_close(SDPAProcessor()(self_attn, x), AttnProcessor2_0()(self_attn, x), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_context_once_per_video_equals_context_per_frame():
    """B contexts for B*F rows (frames of a video consecutive) = each context repeated for its frames."""
    attn = make_attention()
    g = torch.Generator().manual_seed(2)
    videos, frames = 2, 3
    x = torch.randn(videos * frames, 10, 32, generator=g)
    ctx = torch.randn(videos, 7, 24, generator=g)
    shared = SDPAProcessor()(attn, x, ctx)
    torch.testing.assert_close(shared, AttnProcessor2_0()(attn, x, ctx.repeat_interleave(frames, dim=0)),
                               rtol=1e-5, atol=1e-6)
    assert (shared[:frames] - SDPAProcessor()(attn, x[:frames], ctx[1:].expand(1, -1, -1))).abs().max() > 1e-3


@torch.no_grad()
def test_query_slices_give_the_same_output():
    attn = make_attention()
    g = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(4, 50, 32, generator=g), torch.randn(4, 7, 24, generator=g)
    full = SDPAProcessor()(attn, x, ctx)
    for size in (1, 7, 49, 50, 64):
        torch.testing.assert_close(SDPAProcessor(slice_size=size)(attn, x, ctx), full, rtol=1e-6, atol=1e-6)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g) for n in (33, 5, 5))
    torch.testing.assert_close(sliced_sdpa(q, k, v, 0.5, 4), torch.nn.functional.scaled_dot_product_attention(
        q, k, v, scale=0.5), rtol=1e-6, atol=1e-6)


def test_attention_mask_is_refused():
    attn = make_attention()
    with pytest.raises(ValueError, match="no attention mask"):
        SDPAProcessor()(attn, torch.zeros(1, 4, 32), torch.zeros(1, 3, 24), attention_mask=torch.ones(1, 4, 3))


@torch.no_grad()
def test_processor_knows_no_apm():
    """A layer carrying APM-like parameters gets plain attention from the processor: the mixing belongs
    to the APM (t2v/apm.py), not to the generic processor."""
    attn = make_attention()
    g = torch.Generator().manual_seed(4)
    x, ctx = torch.randn(2, 10, 32, generator=g), torch.randn(2, 9, 24, generator=g)
    plain = SDPAProcessor()(attn, x, ctx)
    attn.conv = nn.Conv1d(9, 5, 3, padding="same")
    attn.conv_ln = nn.LayerNorm(24)
    attn.alpha = nn.Parameter(torch.tensor(2.0))
    assert torch.equal(SDPAProcessor()(attn, x, ctx), plain)
