"""The benchmark's memory tricks (bench/memory_tricks.py) on the tiny oracle model: the CAM / base-UNet swap
keeps parts where they should be, attention slices give the same outputs, fp8 storage is half the bytes of
fp16 within a measured error."""
import pytest
import torch
import torch.nn.functional as F

from bench import memory_tricks
from streamingt2v_core.common.attention import SDPAProcessor, sliced_sdpa
from tests.support.memory_model import COMPUTE, T2V_PARTS, assert_same, load_model, model_inputs, run_all


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def inputs(model):
    return model_inputs(model)


def test_sequential_offload_moves_each_part_only_while_used(model, inputs):
    ref = run_all(model, inputs)
    parts = T2V_PARTS + ("unet", "base_model")
    calls = []  # every real .to() of a part, as the module saw it
    running = []  # (part, where its last .to() put it, where the others' last .to() put them) per call

    def spy_to(name, module):
        orig = module.to

        def to(*args, **kwargs):
            calls.append((name, args[0] if args else kwargs.get("device")))
            return orig(*args, **kwargs)

        module.to = to

    for name in parts:
        spy_to(name, getattr(model, name))
    try:
        with memory_tricks.swap_cam_offload(model, COMPUTE, T2V_PARTS) as off:
            # after install: every offloadable part and the CAM sent to the CPU, the base UNet kept
            assert all(off.placement[p] == torch.device("cpu") for p in parts)
            hooks = []
            for name in ("text_encoder", "image_encoder", "resampler", "unet", "base_model"):
                def snap(_m, _a, name=name):
                    last = {}
                    for n, d in calls:
                        last[n] = torch.device(d)
                    running.append((name, last.get(name), {n: d for n, d in last.items() if n != name}))
                hooks.append(getattr(model, name).register_forward_pre_hook(snap))
            calls.clear()
            out = run_all(model, inputs)
            for h in hooks:
                h.remove()
            assert all(off.placement[p] == torch.device("cpu") for p in T2V_PARTS)
            assert off.placement["unet"] == torch.device("cpu") and off.placement["base_model"] == COMPUTE
        assert_same(ref, out)
        assert [r[0] for r in running] == ["text_encoder", "image_encoder", "resampler", "unet", "base_model"]
        rivals = {"unet": {"base_model"}, "base_model": {"unet"}}
        for name, where, others in running:
            assert where == COMPUTE, f"{name} ran while on {where}"
            must_be_away = (set(T2V_PARTS) | rivals.get(name, set())) - {name}
            together = sorted(n for n in must_be_away if others.get(n) == COMPUTE)
            assert together == [], f"{name} ran while {together} were on the device too"
        # the VAE (called through decode, not forward) went in and out once
        assert [torch.device(d) for n, d in calls if n == "vae"] == [COMPUTE, torch.device("cpu")]
        # leaving the context put the base UNet back where it was; nothing else had to move
        assert all(d == torch.device("cpu") for d in off.placement.values())
        assert calls[-1] == ("base_model", torch.device("cpu"))
        assert "decode" not in model.vae.__dict__ and not model.text_encoder._forward_pre_hooks
    finally:
        for name in parts:
            getattr(model, name).__dict__.pop("to", None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for real placement")
def test_sequential_offload_real_placement_cuda(model, inputs):
    ref = run_all(model, inputs)
    model.to("cuda")
    try:
        with memory_tricks.swap_cam_offload(model, "cuda", T2V_PARTS):
            assert next(model.vae.parameters()).device.type == "cpu"
            seen = {}
            h = model.text_encoder.register_forward_pre_hook(
                lambda m, a: seen.update(text=next(m.parameters()).device.type,
                                         vae=next(model.vae.parameters()).device.type))
            out = run_all(model, inputs)
            h.remove()
            assert seen == {"text": "cuda", "vae": "cpu"}
            assert next(model.text_encoder.parameters()).device.type == "cpu"
        assert_same(ref, {k: v.cpu() for k, v in out.items()}, tol=1e-4)
    finally:
        model.to("cpu")


def test_sliced_sdpa_equals_full_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, n, 16, generator=g) for n in (50, 37, 37))
    full = F.scaled_dot_product_attention(q, k, v, scale=0.3)
    for s in (1, 7, 16, 49, 50, 64):
        torch.testing.assert_close(sliced_sdpa(q, k, v, 0.3, s), full, rtol=1e-6, atol=1e-6)


class _MaxQueries(torch.overrides.TorchFunctionMode):
    """Largest number of queries any SDPA call saw."""

    def __init__(self):
        super().__init__()
        self.max = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.max = max(self.max, args[0].shape[-2])
        return func(*args, **(kwargs or {}))


def test_attention_slicing_same_denoiser_output(model, inputs):
    sample, t, ehs, cond, _ = inputs
    with _MaxQueries() as seen:
        ref = model.predict_noise(sample, t, ehs, cond)
    assert seen.max == 64  # the 8x8 latent's spatial self-attention
    n = memory_tricks.set_attention_slicing(model, 16)
    try:
        unet_attn = [m for part in (model.base_model, model.unet) for m in part.modules() if hasattr(m, "to_q")
                     and hasattr(m, "set_processor")]
        assert n == len(unet_attn) > 0 and all(isinstance(m.processor, memory_tricks.SlicedSDPAProcessor) for m in unet_attn)
        assert not isinstance(model.vae.decoder.mid_block.attentions[0].processor, SDPAProcessor)  # VAE untouched
        with _MaxQueries() as seen:
            out = model.predict_noise(sample, t, ehs, cond)
        assert seen.max == 16
    finally:
        assert memory_tricks.set_attention_slicing(model, None) == n
    assert all(type(m.processor) is SDPAProcessor for m in unet_attn)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.predict_noise(sample, t, ehs, cond), ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="slice_size must be at least 1"):
        memory_tricks.SlicedSDPAProcessor(0)


def test_quantize_fp8_per_channel_error():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 32, 3, 3, generator=g) * torch.logspace(-3, 0, 64)[:, None, None, None]
    stored, scale = memory_tricks.quantize_fp8(w)
    assert stored.dtype == torch.float8_e4m3fn and scale.shape == (64, 1, 1, 1)
    back = stored.float() * scale
    rel = ((back - w).abs().amax(dim=(1, 2, 3)) / w.abs().amax(dim=(1, 2, 3)))
    # e4m3 has 3 mantissa bits: rounding error at most 2^-4 of a value, hence of the channel's amax
    assert rel.max() <= 2 ** -4 and rel.max() > 2 ** -7


# Measured on this tiny model (random oracle weights, fp32 compute, every Linear/Conv of every part in fp8):
# relative L2 error of eps 0.181; the same model with its weights rounded to bf16 gives 0.0122, to fp16 0.0015.
# fp8 e4m3 keeps 3 mantissa bits to bf16's 7, so its rounding is 2^4 = 16x coarser: 0.181 / 0.0122 = 14.8.
# Random weights amplify rounding through the depth; trained weights usually less (unmeasured here: no weights).
FP8_REL_ERR_BOUND = 0.3

# Measured on this tiny model (random oracle weights, fp32 compute, every Linear/Conv of every part in fp8):
# relative L2 error of eps 0.181; the same model with its weights rounded to bf16 gives 0.0122, to fp16 0.0015.
# fp8 e4m3 keeps 3 mantissa bits to bf16's 7, so its rounding is 2^4 = 16x coarser: 0.181 / 0.0122 = 14.8.
# Random weights amplify rounding through the depth; trained weights usually less (unmeasured here: no weights).
FP8_REL_ERR_BOUND = 0.3


def test_fp8_weights_half_of_fp16_and_close(model, inputs):
    import copy

    sample, t, ehs, cond, anchor = inputs
    ref = model.predict_noise(sample, t, ehs, cond)
    ref_apm = model.encode_anchor(anchor)
    q = copy.deepcopy(model)
    half = copy.deepcopy(model.base_model).half()
    n = memory_tricks.fp8_weights(q)
    assert n > 100
    layers = [m for m in q.modules() if isinstance(m, memory_tricks.FP8_LAYERS)]
    assert all(m.parametrizations.weight.original.dtype == torch.float8_e4m3fn for m in layers)
    assert q.base_model.conv_in.weight.dtype == torch.float32  # upcast at use
    # weight bytes: exactly half of fp16; all parameters + buffers (scales, biases, norms kept): close to half
    w8 = sum(m.parametrizations.weight.original.numel() for m in q.base_model.modules() if isinstance(m, memory_tricks.FP8_LAYERS))
    w16 = sum(m.weight.numel() * 2 for m in half.modules() if isinstance(m, memory_tricks.FP8_LAYERS))
    assert w8 * 2 == w16
    ratio = memory_tricks.parameter_bytes(q.base_model) / memory_tricks.parameter_bytes(half)
    assert 0.5 <= ratio < 0.52, ratio
    out = q.predict_noise(sample, t, ehs, cond)
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 1e-4 < rel < FP8_REL_ERR_BOUND, rel
    b = copy.deepcopy(model)
    for m in b.modules():
        if isinstance(m, memory_tricks.FP8_LAYERS):
            m.weight.data = m.weight.data.bfloat16().float()
    rel_bf16 = ((b.predict_noise(sample, t, ehs, cond) - ref).norm() / ref.norm()).item()
    assert 4 < rel / rel_bf16 < 40, (rel, rel_bf16)  # ~2^4: the mantissa bits lost, not a bug
    rel_apm = ((q.encode_anchor(anchor) - ref_apm).norm() / ref_apm.norm()).item()
    assert rel_apm < FP8_REL_ERR_BOUND, rel_apm
    assert memory_tricks.remove_fp8_weights(q) == n
    assert q.base_model.conv_in.weight.dtype == torch.float32 and not hasattr(q.base_model.conv_in, "parametrizations")
    torch.testing.assert_close(q.predict_noise(sample, t, ehs, cond), out, rtol=1e-6, atol=1e-6)
