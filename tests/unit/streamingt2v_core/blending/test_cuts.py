"""Randomized blending: chunk layout (no dropped frames), cut statistics, stitching against the official rule."""
import pytest
import torch

from streamingt2v_core.blending.cuts import (boundary_overlaps, chunk_starts, draw_offsets, frame_owners, split_chunks,
                                             stitch_x0)


def official_model_fn_stitch(chunk_x0s, starts, chunk_len, frames, offsets):
    """The official model_fn loop written out: chunk 0 whole, chunk k overwrites from start_k + r_k."""
    b, c, _, h, w = chunk_x0s[0].shape
    x0 = torch.full((b, c, frames, h, w), float("nan"))
    for k, (s, x0_c) in enumerate(zip(starts, chunk_x0s)):
        r = 0 if k == 0 else int(offsets[k - 1])
        x0[:, :, s + r:s + chunk_len] = x0_c[:, :, r:]
    return x0


@pytest.mark.parametrize("frames", [16, 24, 40, 41, 57, 240])
def test_every_frame_count_comes_out_whole(frames):
    chunk, overlap = 24, 8
    starts = chunk_starts(frames, chunk, overlap)
    clen = min(chunk, frames)
    assert starts[0] == 0 and starts[-1] + clen == frames
    overlaps = boundary_overlaps(starts, clen)
    assert all(o >= overlap for o in overlaps), overlaps
    gen = torch.Generator().manual_seed(frames)
    x = torch.randn(1, 2, frames, 3, 2)
    for _ in range(5):  # several steps' cuts
        offsets = draw_offsets(overlaps, gen)
        chunks = split_chunks(x, starts, clen)
        out = stitch_x0(chunks, starts, clen, frames, offsets)
        # x0 of a frame is its own prediction, whichever chunk supplied it: stitching the split is the identity
        assert out.shape == x.shape
        torch.testing.assert_close(out, x, rtol=0, atol=0)


@pytest.mark.parametrize("frames,expected", [(40, [0, 16]), (56, [0, 16, 32]), (232, list(range(0, 209, 16)))])
def test_official_lengths_keep_the_official_layout(frames, expected):
    assert chunk_starts(frames, 24, 8) == expected


def test_other_lengths_spread_chunks_without_dropping():
    assert chunk_starts(41, 24, 8) == [0, 8, 17]
    assert chunk_starts(16, 24, 8) == [0]          # shorter than a chunk: one chunk of all frames
    assert chunk_starts(25, 24, 8) == [0, 1]
    starts = chunk_starts(240, 24, 8)
    assert len(starts) == 15 and starts[-1] == 216  # official would trim 240 to 232 frames


def test_stitch_matches_the_official_overwrite_rule_with_distinct_chunks():
    gen = torch.Generator().manual_seed(0)
    for frames in (40, 41, 57, 88):
        starts = chunk_starts(frames, 24, 8)
        clen = 24
        chunk_x0s = [torch.randn(2, 3, clen, 2, 2, generator=gen) for _ in starts]
        offsets = draw_offsets(boundary_overlaps(starts, clen), gen)
        ref = official_model_fn_stitch(chunk_x0s, starts, clen, frames, offsets)
        out = stitch_x0(torch.cat(chunk_x0s), starts, clen, frames, offsets)
        assert not torch.isnan(ref).any()
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


def left_frequency(overlap: int, draws: int, generator: torch.Generator) -> torch.Tensor:
    """Empirical P(overlap frame j keeps the left chunk) over `draws` cuts; theory (O-1-j)/O."""
    offsets = draw_offsets([overlap] * draws, generator)
    j = torch.arange(overlap)
    return (j[None, :] < offsets[:, None]).double().mean(0)


def test_left_chunk_frequency_is_official():
    overlap, draws = 8, 40000
    freq = left_frequency(overlap, draws, torch.Generator().manual_seed(1234))
    theory = torch.tensor([(overlap - 1 - j) / overlap for j in range(overlap)], dtype=torch.float64)
    tol = 4 * torch.sqrt(theory * (1 - theory) / draws) + 1e-12
    assert ((freq - theory).abs() <= tol).all(), (freq, theory)
    assert freq[-1] == 0  # the last overlap frame always comes from the right chunk


def test_owner_frequencies_in_a_stitched_video():
    # the same statistic measured on frame owners, as the sampler uses them
    frames, starts, clen = 40, [0, 16], 24
    gen = torch.Generator().manual_seed(7)
    draws = 8000
    left = torch.zeros(8, dtype=torch.float64)
    for _ in range(draws):
        owner, local = frame_owners(frames, starts, clen, draw_offsets([8], gen))
        left += (owner[16:24] == 0).double()
        assert (local >= 0).all() and (local < clen).all()
    freq = left / draws
    theory = torch.tensor([(7 - j) / 8 for j in range(8)], dtype=torch.float64)
    assert ((freq - theory).abs() < 4 * torch.sqrt(theory * (1 - theory) / draws) + 1e-12).all()


def test_offsets_are_seeded():
    a = draw_offsets([8] * 50, torch.Generator().manual_seed(3))
    b = draw_offsets([8] * 50, torch.Generator().manual_seed(3))
    c = draw_offsets([8] * 50, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 7


@pytest.mark.parametrize("chunk,overlap", [(8, 8), (8, 12), (24, 0)])
def test_bad_chunking_is_rejected(chunk, overlap):
    with pytest.raises(ValueError, match="overlap"):
        chunk_starts(40, chunk, overlap)


def test_chunking_problems_name_the_input_and_the_range():
    from streamingt2v_core.blending.cuts import MAX_CHUNK, chunking_problems

    assert chunking_problems(24, 8) == [] and chunking_problems(MAX_CHUNK, 1) == []
    assert chunking_problems(24, 0) == ["overlap: 0 is too small; allowed 1..chunk-1 (official 8)"]
    (too_big,) = chunking_problems(MAX_CHUNK + 1, 8)
    assert too_big.startswith("chunk: 1025 is too large") and "1024" in too_big
    (not_larger,) = chunking_problems(8, 8)
    assert not_larger.startswith("chunk: 8 must be larger than overlap (8)")
    with pytest.raises(ValueError, match="allowed 1..chunk-1"):  # the core refuses with the same words
        chunk_starts(40, 24, 0)


def test_bad_offsets_are_rejected():
    with pytest.raises(ValueError, match="outside"):
        frame_owners(40, [0, 16], 24, torch.tensor([8]))
    with pytest.raises(ValueError, match="offsets"):
        frame_owners(40, [0, 16], 24, torch.tensor([1, 2]))


def test_chunk_layouts_that_do_not_cover_the_video_are_rejected():
    """starts/chunk_len that leave frames uncovered, or run past the video, used to index silently."""
    with pytest.raises(ValueError, match=r"starts \[0, 16\].*24 frames.*frame 40.*48 frames"):
        frame_owners(48, [0, 16], 24, torch.tensor([3]))  # frames 40..47 in no chunk
    with pytest.raises(ValueError, match=r"starts.*\[2, 16\].*begin at 0"):
        frame_owners(40, [2, 16], 24, torch.tensor([3]))
    with pytest.raises(ValueError, match=r"starts.*\[0, 30, 16\]"):
        frame_owners(40, [0, 30, 16], 24, torch.tensor([3, 3]))
    x = torch.randn(1, 4, 40, 2, 2)
    with pytest.raises(ValueError, match=r"x has 40 frames.*24 frames.*\[0, 24\].*48"):
        split_chunks(x, [0, 24], 24)  # the second chunk would hold 16 frames
    with pytest.raises(ValueError, match=r"x.*\(B, C, F, h, w\).*\(4, 40, 2, 2\)"):
        split_chunks(x[0], [0, 16], 24)
    with pytest.raises(ValueError, match=r"chunk_x0.*\(K\*B, C, 24, h, w\).*\(8, 24, 2, 2\)"):
        stitch_x0(torch.randn(8, 24, 2, 2), [0, 16], 24, 40, torch.tensor([3]))
