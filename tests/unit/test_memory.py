"""Memory options (streamingt2v_core.memory) on the tiny oracle model: same outputs, parts where they should be,
fp8 storage half the bytes of fp16 within a measured error, and the meta-device activation estimate."""
import os

import pytest
import torch
import torch.nn.functional as F

import streamingt2v_core as st
from streamingt2v_core import memory, tiny
from streamingt2v_core.attention import SDPAProcessor

ORACLE = os.path.join(os.path.dirname(__file__), "..", "data", "oracle")
# No second device on a CPU machine: "cpu:0" compares unequal to "cpu", so every move is a real .to() call
# with a distinguishable target; the CUDA test below checks real placement where a GPU exists.
COMPUTE = torch.device("cpu", 0)


@pytest.fixture(scope="module")
def model():
    state = tiny.regenerate(tiny.read_manifest(os.path.join(ORACLE, "tiny_manifest.tsv")))
    return st.load_streamingt2v(state, config=os.path.join(ORACLE, "tiny_config.json"))


@pytest.fixture(scope="module")
def inputs(model):
    cfg = model.config
    g = torch.Generator().manual_seed(5)
    sample = torch.randn(1, 4, cfg.chunk_frames, cfg.height // 8, cfg.width // 8, generator=g)
    ehs = torch.randn(1, cfg.text_tokens + cfg.apm_tokens, cfg.context_dim, generator=g)
    cond = torch.rand(1, cfg.cond_frames, 3, cfg.height, cfg.width, generator=g) * 2 - 1
    anchor = torch.rand(1, 3, cfg.height, cfg.width, generator=g) * 2 - 1
    return sample, torch.tensor(501), ehs, cond, anchor


def run_all(model, inputs):
    sample, t, ehs, cond, anchor = inputs
    return {
        "text": model.encode_prompt(["", "a red fox"]),
        "apm": model.encode_anchor(anchor),
        "eps": model.predict_noise(sample, t, ehs, cond),
        "frames": model.decode_latents(sample[:, :, :4]),
    }


def assert_same(a: dict, b: dict, tol=1e-6):
    for k in a:
        err = (a[k].float() - b[k].float()).abs().max().item()
        scale = a[k].float().abs().max().item()
        assert err <= tol * max(scale, 1.0), f"{k}: max abs diff {err} (scale {scale})"


def test_sequential_offload_moves_each_part_only_while_used(model, inputs):
    ref = run_all(model, inputs)
    parts = memory.OFFLOAD_PARTS + ("unet", "base_model")
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
        with memory.sequential_offload(model, COMPUTE, swap_cam=True) as off:
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
            assert all(off.placement[p] == torch.device("cpu") for p in memory.OFFLOAD_PARTS)
            assert off.placement["unet"] == torch.device("cpu") and off.placement["base_model"] == COMPUTE
        assert_same(ref, out)
        assert [r[0] for r in running] == ["text_encoder", "image_encoder", "resampler", "unet", "base_model"]
        rivals = {"unet": {"base_model"}, "base_model": {"unet"}}
        for name, where, others in running:
            assert where == COMPUTE, f"{name} ran while on {where}"
            must_be_away = (set(memory.OFFLOAD_PARTS) | rivals.get(name, set())) - {name}
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


def test_sequential_offload_refuses_unknown_parts(model):
    with pytest.raises(ValueError, match="no part.*'tokenizer_model'"):
        memory.sequential_offload(model, "cpu", parts=("vae", "tokenizer_model"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for real placement")
def test_sequential_offload_real_placement_cuda(model, inputs):
    ref = run_all(model, inputs)
    model.to("cuda")
    try:
        with memory.sequential_offload(model, "cuda", swap_cam=True):
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


# -- attention in slices ---------------------------------------------------------------------------

def test_sliced_sdpa_equals_full_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, n, 16, generator=g) for n in (50, 37, 37))
    full = F.scaled_dot_product_attention(q, k, v, scale=0.3)
    for s in (1, 7, 16, 49, 50, 64):
        torch.testing.assert_close(memory.sliced_sdpa(q, k, v, 0.3, s), full, rtol=1e-6, atol=1e-6)


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
    n = memory.set_attention_slicing(model, 16)
    try:
        unet_attn = [m for part in (model.base_model, model.unet) for m in part.modules() if hasattr(m, "to_q")
                     and hasattr(m, "set_processor")]
        assert n == len(unet_attn) > 0 and all(isinstance(m.processor, memory.SlicedSDPAProcessor) for m in unet_attn)
        assert not isinstance(model.vae.decoder.mid_block.attentions[0].processor, SDPAProcessor)  # VAE untouched
        with _MaxQueries() as seen:
            out = model.predict_noise(sample, t, ehs, cond)
        assert seen.max == 16
    finally:
        assert memory.set_attention_slicing(model, None) == n
    assert all(type(m.processor) is SDPAProcessor for m in unet_attn)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.predict_noise(sample, t, ehs, cond), ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="slice_size must be at least 1"):
        memory.SlicedSDPAProcessor(0)


def test_feed_forward_chunking_same_output(model, inputs):
    sample, t, ehs, cond, _ = inputs
    ref = model.predict_noise(sample, t, ehs, cond)
    n = memory.set_feed_forward_chunking(model, 100)  # 100 divides no token count here
    try:
        from diffusers.models.attention import FeedForward

        rows = []
        hooks = [m.net[0].register_forward_hook(lambda _m, a, _o: rows.append(a[0].reshape(-1, a[0].shape[-1]).shape[0]))
                 for m in model.modules() if isinstance(m, FeedForward)]
        out = model.predict_noise(sample, t, ehs, cond)
        for h in hooks:
            h.remove()
        assert n > 0 and max(rows) <= 100 and min(rows) < 100
    finally:
        memory.set_feed_forward_chunking(model, None)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


# -- fp8 weights -----------------------------------------------------------------------------------

def test_quantize_fp8_per_channel_error():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 32, 3, 3, generator=g) * torch.logspace(-3, 0, 64)[:, None, None, None]
    stored, scale = memory.quantize_fp8(w)
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


def test_fp8_weights_half_of_fp16_and_close(model, inputs):
    import copy

    sample, t, ehs, cond, anchor = inputs
    ref = model.predict_noise(sample, t, ehs, cond)
    ref_apm = model.encode_anchor(anchor)
    q = copy.deepcopy(model)
    half = copy.deepcopy(model.base_model).half()
    n = memory.fp8_weights(q)
    assert n > 100
    layers = [m for m in q.modules() if isinstance(m, memory._FP8_LAYERS)]
    assert all(m.parametrizations.weight.original.dtype == torch.float8_e4m3fn for m in layers)
    assert q.base_model.conv_in.weight.dtype == torch.float32  # upcast at use
    # weight bytes: exactly half of fp16; all parameters + buffers (scales, biases, norms kept): close to half
    w8 = sum(m.parametrizations.weight.original.numel() for m in q.base_model.modules() if isinstance(m, memory._FP8_LAYERS))
    w16 = sum(m.weight.numel() * 2 for m in half.modules() if isinstance(m, memory._FP8_LAYERS))
    assert w8 * 2 == w16
    ratio = memory.parameter_bytes(q.base_model) / memory.parameter_bytes(half)
    assert 0.5 <= ratio < 0.52, ratio
    out = q.predict_noise(sample, t, ehs, cond)
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 1e-4 < rel < FP8_REL_ERR_BOUND, rel
    b = copy.deepcopy(model)
    for m in b.modules():
        if isinstance(m, memory._FP8_LAYERS):
            m.weight.data = m.weight.data.bfloat16().float()
    rel_bf16 = ((b.predict_noise(sample, t, ehs, cond) - ref).norm() / ref.norm()).item()
    assert 4 < rel / rel_bf16 < 40, (rel, rel_bf16)  # ~2^4: the mantissa bits lost, not a bug
    rel_apm = ((q.encode_anchor(anchor) - ref_apm).norm() / ref_apm.norm()).item()
    assert rel_apm < FP8_REL_ERR_BOUND, rel_apm
    assert memory.remove_fp8_weights(q) == n
    assert q.base_model.conv_in.weight.dtype == torch.float32 and not hasattr(q.base_model.conv_in, "parametrizations")
    torch.testing.assert_close(q.predict_noise(sample, t, ehs, cond), out, rtol=1e-6, atol=1e-6)


# -- activation estimate ---------------------------------------------------------------------------

def test_activation_peak_bytes_counts_live_tensors_and_attention():
    with torch.device("meta"):
        a = torch.empty(1024, 1024)
        q = torch.empty(1, 2, 512, 64)

    def chain():
        b = a * 2
        c = b * 2  # b and c alive: 8 MiB
        del b
        return c + 1  # c and the result: 8 MiB

    assert memory.activation_peak_bytes(chain) == 8 * 2 ** 20
    out_bytes = 1 * 2 * 512 * 64 * 4
    fused = memory.activation_peak_bytes(lambda: F.scaled_dot_product_attention(q, q, q))
    math = memory.activation_peak_bytes(lambda: F.scaled_dot_product_attention(q, q, q), fused_attention=False)
    assert fused == out_bytes
    assert math >= 2 * 512 * 512 * 4  # the score matrix of both heads


# -- the refiner: offload of its text tower and VAE, feed-forward chunks in its diffusers UNet ------

def test_refiner_offload_and_feed_forward_chunks_keep_the_video(tmp_path):
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
    import make_tiny_refiner

    from streamingt2v_core.refine import refine_video
    from streamingt2v_core.refiner import load_refiner

    refiner = load_refiner(make_tiny_refiner.write(tmp_path / "tiny_v2v", "converted"))
    images = torch.rand(8, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    kw = dict(steps=1, seed=3, canvas=(80, 128), slice_size=4)
    ref = refine_video(refiner, images, "a cat", "", **kw)
    with memory.sequential_offload(refiner, COMPUTE, parts=("text_encoder", "vae")) as off:
        out = refine_video(refiner, images, "a cat", "", **kw)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    # text in and out once; VAE in and out per encode/decode slice (2 encode + 2 decode slices of 4 frames)
    # (both start on the CPU, so installing moves nothing)
    assert [m for m in off.moves if m[0] == "text_encoder"] == [("text_encoder", "cpu:0"), ("text_encoder", "cpu")]
    assert [m for m in off.moves if m[0] == "vae"] == [("vae", "cpu:0"), ("vae", "cpu")] * 4
    assert memory.set_feed_forward_chunking(refiner.unet, 300) > 0
    try:
        chunked = refine_video(refiner, images, "a cat", "", **kw)
    finally:
        memory.set_feed_forward_chunking(refiner.unet, None)
    torch.testing.assert_close(chunked, ref, rtol=0, atol=1e-5)


def test_sequential_offload_sends_a_part_away_when_it_raises(model):
    with memory.sequential_offload(model, COMPUTE) as off:
        with pytest.raises(IndexError):
            model.encode_text(torch.full((1, 77), 10 ** 9, dtype=torch.long))  # token id out of the vocabulary
        assert off.moves == [("text_encoder", "cpu:0"), ("text_encoder", "cpu")]
        assert off.placement["text_encoder"] == torch.device("cpu")


# -- memory modes (what the nodes' `memory` input runs) ---------------------------------------------

@pytest.mark.parametrize("mode, accel, free, need, low", [
    ("low vram", False, 10 ** 12, 1, True),      # asked for: always, even on the CPU
    ("max speed", True, 1, 10 ** 12, False),     # asked for: never, even when it will not fit
    ("auto", False, 1, 10 ** 12, False),         # CPU: nowhere to offload to
    ("auto", True, 9 * 2 ** 30, 10 * 2 ** 30, True),
    ("auto", True, 10 * 2 ** 30, 10 * 2 ** 30, False),
])
def test_wants_low_memory(mode, accel, free, need, low):
    assert memory.wants_low_memory(mode, accel, free, need) is low


def test_wants_low_memory_names_the_modes():
    with pytest.raises(ValueError, match="memory: 'tiny'.*'auto', 'max speed', 'low vram'"):
        memory.wants_low_memory("tiny", True, 1, 1)


def test_low_memory_plan_keeps_outputs_and_restores_the_model(model, inputs):
    from diffusers.models.attention import FeedForward

    ref = run_all(model, inputs)
    ffs = [m for m in model.modules() if isinstance(m, FeedForward)]
    assert ffs
    with memory.low_memory(model, COMPUTE, memory.OFFLOAD_PARTS, feed_forward_chunk=64) as off:
        assert all("forward" in m.__dict__ for m in ffs)  # every feed-forward chunked
        out = run_all(model, inputs)
    assert_same(ref, out)
    # each offloaded part visited the device while it ran and went back
    for part in ("text_encoder", "image_encoder", "resampler", "vae"):
        assert (part, "cpu:0") in off.moves and off.moves[-1][1] == "cpu"
    assert not any("forward" in m.__dict__ for m in ffs)
    assert not model.text_encoder._forward_pre_hooks and "decode" not in model.vae.__dict__


def test_low_memory_plan_restores_the_model_when_the_run_raises(model):
    from diffusers.models.attention import FeedForward

    with pytest.raises(KeyboardInterrupt):
        with memory.low_memory(model, COMPUTE, ("vae",)):
            raise KeyboardInterrupt  # what an interrupt looks like from inside a node
    assert not any("forward" in m.__dict__ for m in model.modules() if isinstance(m, FeedForward))
    assert "decode" not in model.vae.__dict__


def test_refiner_chunk_estimate_follows_the_measured_peak(tmp_path):
    """The meta-device estimate the refiner node sizes its batches with equals what the same call allocates
    for real (CPU, fp32, counted by LiveTensorBytes); feed-forward chunks lower it; guidance rows double it."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
    import make_tiny_refiner

    from streamingt2v_core.refine import chunk_activation_bytes
    from streamingt2v_core.refiner import load_refiner

    refiner = load_refiner(make_tiny_refiner.write(tmp_path / "tiny_v2v", "converted"))
    refiner.canvas = (80, 128)
    h, w = 80 // refiner.latent_factor, 128 // refiner.latent_factor
    est = chunk_activation_bytes(refiner, 8, rows=2)
    x = torch.randn(2, 4, 8, h, w)
    ctx = torch.randn(2, 77, refiner.unet.config.cross_attention_dim)
    t = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        real = memory.activation_peak_bytes(lambda: refiner.unet(x, t, encoder_hidden_states=ctx, return_dict=False)[0],
                                            fused_attention=False)
    assert abs(est - real) <= 0.02 * real, (est, real)
    assert chunk_activation_bytes(refiner, 8, rows=1) < 0.6 * est
    assert chunk_activation_bytes(refiner, 8, rows=2, feed_forward_chunk=64) < est
    assert chunk_activation_bytes(refiner, 8, rows=2) == est  # cached, same figure
