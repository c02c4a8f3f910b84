"""t2v.apm: the APM mixing of a cross-attention's context (against the formula written out), which holds
whatever attention processor the layer runs on, and the resampler's frame mean."""
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from streamingt2v_core.common.attention import SDPAProcessor
from streamingt2v_core.t2v.apm import APMResampler, add_apm_mixing

TEXT, IMAGE, DIM = 5, 3, 16


def apm_attention(alpha=None):
    torch.manual_seed(0)
    attn = Attention(query_dim=DIM, cross_attention_dim=DIM, heads=2, dim_head=8).eval()
    attn.set_processor(SDPAProcessor())
    add_apm_mixing(attn, TEXT + IMAGE, TEXT, DIM)
    if alpha is not None:
        with torch.no_grad():
            attn.alpha.fill_(alpha)
            attn.conv_ln.weight.normal_(1, 0.1)
            attn.conv_ln.bias.normal_(0, 0.1)
    return attn


def mixed_by_hand(attn, ctx):
    """text + SiLU(alpha) * LayerNorm(Conv1d_{T+I -> T}(context)), the official processor's formula."""
    conv = F.conv1d(ctx, attn.conv.weight, attn.conv.bias, padding=1)
    ln = F.layer_norm(conv, (DIM,), attn.conv_ln.weight, attn.conv_ln.bias, attn.conv_ln.eps)
    return ctx[:, :TEXT] + F.silu(attn.alpha) * ln


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 6, DIM, generator=g), torch.randn(2, TEXT + IMAGE, DIM, generator=g)


def test_official_parameter_names():
    shapes = {k: tuple(v.shape) for k, v in apm_attention().state_dict().items() if k.split(".")[0] in
              ("conv", "conv_ln", "alpha")}
    assert shapes == {"conv.weight": (TEXT, TEXT + IMAGE, 3), "conv.bias": (TEXT,), "conv_ln.weight": (DIM,),
                      "conv_ln.bias": (DIM,), "alpha": ()}


@torch.no_grad()
def test_fresh_apm_is_off(inputs):
    """alpha = 0 (official init): attention reads the text tokens alone, exactly."""
    x, ctx = inputs
    attn = apm_attention()
    assert torch.equal(attn(x, encoder_hidden_states=ctx), SDPAProcessor()(attn, x, ctx[:, :TEXT]))


@torch.no_grad()
def test_mixing_equals_the_formula(inputs):
    x, ctx = inputs
    attn = apm_attention(alpha=0.8)
    out = attn(x, encoder_hidden_states=ctx)
    torch.testing.assert_close(out, SDPAProcessor()(attn, x, mixed_by_hand(attn, ctx)), rtol=1e-6, atol=1e-6)
    assert (out - SDPAProcessor()(attn, x, ctx[:, :TEXT])).abs().max() > 1e-3  # the image tokens matter
    torch.testing.assert_close(attn(x, ctx), out, rtol=0, atol=0)  # context given positionally


@torch.no_grad()
def test_mixing_holds_on_any_processor(inputs):
    """The mixing is the layer's, not the processor's: swapping processors (sliced, diffusers') keeps it."""
    x, ctx = inputs
    attn = apm_attention(alpha=-1.3)
    ref = attn(x, encoder_hidden_states=ctx)
    attn.set_processor(SDPAProcessor(slice_size=2))
    torch.testing.assert_close(attn(x, encoder_hidden_states=ctx), ref, rtol=1e-6, atol=1e-6)
    attn.set_processor(AttnProcessor2_0())  # per-row context: repeat it for the 2 frames of each video
    per_row = ctx.repeat_interleave(2, dim=0)
    torch.testing.assert_close(attn(x, encoder_hidden_states=per_row), ref, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_self_attention_call_is_untouched(inputs):
    x, _ = inputs
    attn = apm_attention(alpha=0.8)
    assert torch.equal(attn(x), SDPAProcessor()(attn, x))


@torch.no_grad()
def test_resampler_averages_the_frames():
    torch.manual_seed(0)
    rs = APMResampler(dim=8, hidden=12, num_tokens=4).eval()
    emb = torch.randn(2, 3, 8)
    out = rs(emb)
    assert out.shape == (2, 4, 8)
    torch.testing.assert_close(out, rs(emb.mean(dim=1)), rtol=0, atol=0)  # (B, D): one frame
    assert (out[0] - out[1]).abs().max() > 1e-4
