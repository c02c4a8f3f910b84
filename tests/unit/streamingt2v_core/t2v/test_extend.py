"""t2v.extend: chunk arithmetic, the checks before a chunk runs, and the guidance rows of a denoiser call."""
import pytest
import torch

from streamingt2v_core.t2v.config import StreamingT2VConfig
from streamingt2v_core.t2v.extend import (StreamConditioning, chunk_prompts, chunks_for_frames, extend_video,
                                         generate_chunk, split_prompts, stream_problem)


def test_chunks_for_frames():
    assert [chunks_for_frames(n) for n in (1, 8, 9, 16, 17, 64)] == [1, 1, 2, 2, 3, 8]
    assert chunks_for_frames(17, StreamingT2VConfig(chunk_frames=24).new_frames_per_chunk) == 2
    assert chunks_for_frames(9, StreamingT2VConfig().new_frames_per_chunk) == chunks_for_frames(9)
    with pytest.raises(ValueError, match="at least 1"):
        chunks_for_frames(0)


def test_one_prompt_rule():
    """The rule the node and the core share: line i for chunk i, the last carries on, extra lines unused."""
    assert split_prompts(" a cat \n\n  a dog\n", True) == ["a cat", "a dog"]
    assert split_prompts(" a cat \n a dog", False) == [" a cat \n a dog"]
    assert split_prompts("\n \n", True) == []
    assert chunk_prompts(["a", "b"], 4) == ["a", "b", "b", "b"]
    assert chunk_prompts(["a", "b", "c"], 2) == ["a", "b"]
    assert chunk_prompts("x", 3) == ["x", "x", "x"]
    with pytest.raises(ValueError, match="none given"):
        chunk_prompts([], 2)


def test_stream_problem_names_the_fix():
    cfg = StreamingT2VConfig()
    assert stream_problem(cfg, 8, 256, 256) is None
    assert "at least 8 frames" in stream_problem(cfg, 7, 256, 256)
    assert "divisible by 8" in stream_problem(cfg, 8, 256, 252) and "256x252" in stream_problem(cfg, 8, 252, 256)
    assert stream_problem(StreamingT2VConfig(cond_frames=4), 4, 256, 256) is None  # asks the config, not 8


def test_extend_video_applies_prompts_chunk_by_chunk(tiny_model, monkeypatch):
    """Two prompts for three chunks: chunk 0 gets the first, chunks 1 and 2 the second (encoded once)."""
    from streamingt2v_core.t2v import extend

    seen = []
    monkeypatch.setattr(extend, "generate_chunk",
                        lambda model, tail, cond, *a, **k: seen.append(cond.prompt) or torch.zeros(16, 3, 64, 64))
    monkeypatch.setattr(extend.StreamConditioning, "build", classmethod(
        lambda cls, model, prompt, *a, **k: type("C", (), {"prompt": prompt})()))
    extend.extend_video(tiny_model, torch.rand(8, 3, 64, 64), 3, ["a", "b"],
                        anchor_tokens=torch.zeros(1, 16, tiny_model.config.context_dim))
    assert seen == ["a", "b", "b"]


def test_chunk_input_checks(tiny_model):
    cond = StreamConditioning(torch.zeros(2, 93, tiny_model.config.context_dim))
    with pytest.raises(ValueError, match="last 8 frames"):
        generate_chunk(tiny_model, torch.rand(7, 3, 64, 64), cond, steps=1)
    with pytest.raises(ValueError, match="divisible by 8"):
        generate_chunk(tiny_model, torch.rand(8, 3, 60, 64), cond, steps=1)


def test_guidance_rows(tiny_model):
    """Guided: both rows in one base-UNet call per step; guidance 1: the conditional row alone."""
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(8, 3, 64, 64, generator=g)
    cond = StreamConditioning(torch.randn(2, 93, tiny_model.config.context_dim, generator=g))
    rows = []
    hook = tiny_model.base_model.register_forward_pre_hook(lambda _m, a: rows.append(a[0].shape[0]))
    try:
        guided = generate_chunk(tiny_model, frames, cond, steps=2, guidance=7.5,
                                generator=torch.Generator().manual_seed(1))
        plain = generate_chunk(tiny_model, frames, cond, steps=2, guidance=1.0,
                               generator=torch.Generator().manual_seed(1))
    finally:
        hook.remove()
    assert rows == [2, 2, 1, 1]
    assert guided.shape == plain.shape == (16, 3, 64, 64) and (guided - plain).abs().max() > 1e-4


def _no_heavy_work(monkeypatch, model):
    """The encoders and the denoiser fail the test if they run: the checks must come first."""
    for name in ("encode_prompt", "encode_anchor", "encode_cond_frames", "predict_noise"):
        monkeypatch.setattr(model, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} ran before the check"))


def _cond(model, rows=2, tokens=93, width=None):
    return StreamConditioning(torch.zeros(rows, tokens, width or model.config.context_dim))


BAD_CHUNKS = [
    ("IMAGE layout", lambda f: f.permute(0, 2, 3, 1), {}, r"prev_frames.*\(8, 64, 64, 3\).*permute\(0, 3, 1, 2\)"),
    ("uint8 frames", lambda f: (f * 255).to(torch.uint8), {}, r"prev_frames.*torch.uint8.*/ 255"),
    ("frames in [-1, 1]", lambda f: f * 2 - 1, {}, r"prev_frames.*\[0, 1\]"),
    ("frames in 0..255", lambda f: f * 255, {}, r"prev_frames.*\[0, 1\]"),
    ("one context row, guided", None, dict(rows=1), r"cond.context.*\(1, 93, 1024\).*2 rows"),
    ("context width", None, dict(width=512), r"cond.context.*\(2, 93, 512\).*1024"),
    ("context without APM tokens", None, dict(tokens=77), r"cond.context.*\(2, 77, 1024\).*93"),
]


@pytest.mark.parametrize("frames_change, cond_kw, message", [c[1:] for c in BAD_CHUNKS], ids=[c[0] for c in BAD_CHUNKS])
def test_generate_chunk_refuses_inconsistent_inputs(tiny_model, monkeypatch, frames_change, cond_kw, message):
    frames = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    if frames_change is not None:
        frames = frames_change(frames)
    cond = _cond(tiny_model, **cond_kw)
    _no_heavy_work(monkeypatch, tiny_model)
    with pytest.raises(ValueError, match=message):
        generate_chunk(tiny_model, frames, cond, steps=1, guidance=7.5)


def test_generate_chunk_checks_steps_before_encoding(tiny_model, monkeypatch):
    _no_heavy_work(monkeypatch, tiny_model)
    with pytest.raises(ValueError, match="steps must be between 1 and 1000"):
        generate_chunk(tiny_model, torch.rand(8, 3, 64, 64), _cond(tiny_model), steps=0)


BAD_STREAMS = [
    ("too few frames", dict(frames=torch.rand(4, 3, 64, 64)), r"stream: 4 frames.*at least 8"),
    ("IMAGE layout", dict(frames=torch.rand(8, 64, 64, 3)), r"frames.*\(8, 64, 64, 3\).*permute\(0, 3, 1, 2\)"),
    ("uint8 frames", dict(frames=torch.full((8, 3, 64, 64), 200, dtype=torch.uint8)), r"frames.*torch.uint8"),
    ("frames in 0..255", dict(frames=torch.rand(8, 3, 64, 64) * 255), r"frames.*\[0, 1\]"),
    ("size", dict(frames=torch.rand(8, 3, 60, 64)), r"divisible by 8"),
    ("steps", dict(steps=0), r"steps must be between 1 and 1000"),
    ("anchor batch", dict(anchor=torch.rand(1, 3, 64, 64)), r"anchor.*\(3, H, W\).*\(1, 3, 64, 64\)"),
    ("anchor in [-1, 1]", dict(anchor=torch.rand(3, 64, 64) * 2 - 1), r"anchor.*\[0, 1\]"),
    ("anchor_tokens of 2 rows", dict(anchor_tokens=torch.zeros(2, 16, 1024)),
     r"anchor_tokens.*\(2, 16, 1024\).*\(1, 16, 1024\)"),
    ("anchor_tokens width", dict(anchor_tokens=torch.zeros(1, 16, 512)), r"anchor_tokens.*\(1, 16, 512\).*1024"),
]


@pytest.mark.parametrize("kw, message", [c[1:] for c in BAD_STREAMS], ids=[c[0] for c in BAD_STREAMS])
def test_extend_video_checks_its_inputs_before_encoding(tiny_model, monkeypatch, kw, message):
    kw = {"frames": torch.rand(8, 3, 64, 64), **kw}
    _no_heavy_work(monkeypatch, tiny_model)
    with pytest.raises(ValueError, match=message):
        extend_video(tiny_model, kw.pop("frames"), 1, "a cat", **kw)


def test_stream_conditioning_checks_the_anchor(tiny_model, monkeypatch):
    _no_heavy_work(monkeypatch, tiny_model)
    with pytest.raises(ValueError, match=r"anchor.*\(64, 64, 3\).*permute\(2, 0, 1\)"):
        StreamConditioning.build(tiny_model, "a cat", anchor=torch.rand(64, 64, 3))
    with pytest.raises(ValueError, match=r"anchor_tokens.*\(1, 8, 1024\).*\(1, 16, 1024\)"):
        StreamConditioning.build(tiny_model, "a cat", anchor_tokens=torch.zeros(1, 8, 1024))
