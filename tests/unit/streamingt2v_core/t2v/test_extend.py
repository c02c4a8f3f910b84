"""t2v.extend: chunk arithmetic, the checks before a chunk runs, and the guidance rows of a denoiser call."""
import pytest
import torch

from streamingt2v_core.t2v.config import StreamingT2VConfig
from streamingt2v_core.t2v.extend import (StreamConditioning, chunk_prompts, chunks_for_frames, generate_chunk,
                                         split_prompts, stream_problem)


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
    extend.extend_video(tiny_model, torch.rand(8, 3, 64, 64), 3, ["a", "b"], anchor_tokens=torch.zeros(1, 16, 8))
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
