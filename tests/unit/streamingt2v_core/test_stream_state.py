"""streamingt2v_core.stream_state: a stream's state as one safetensors file, read back exactly; a run split
at any chunk and continued from the file equals the uninterrupted run bit for bit; and every file that
cannot be continued from is refused with a message naming both sides and the fix."""
from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from streamingt2v_core.stream_state import (FORMAT_VERSION, META_KEY, ModelIdentity, SavedStream, StateError,
                                            identity_problem, make_generator, model_identity, read_header,
                                            read_state, write_state)
from streamingt2v_core.t2v.extend import extend_video

pytestmark = pytest.mark.resume

MODEL = ModelIdentity(name="tiny_streamingt2v.safetensors", size=123, hash="ab" * 32, dtype="float32")
STEPS = 2
PROMPTS = ["a cat on a sofa", "the cat jumps", "a dog arrives", "they sleep"]


def a_state(frames=None, **change) -> SavedStream:
    g = torch.Generator().manual_seed(5)
    torch.randn(100, generator=g)
    fields = dict(
        family="streamingt2v", model=MODEL, seed=5, generator_state=g.get_state(), num_chunks=3, num_frames=32,
        tensors={"cond_frames": torch.rand(8, 3, 16, 24, generator=g),
                 "anchor_tokens": torch.randn(1, 16, 32, generator=g),
                 "anchor_image": torch.rand(1, 3, 16, 24, generator=g)},
        settings={"prompts": ["", "a cat", "a cat\nwith a hat"], "negative_prompt": "blurry", "steps": 50,
                  "guidance": 7.5, "eta": 1.0, "anchor_source": "frame 0 of the stream"},
        frames=frames)
    fields.update(change)
    return SavedStream(**fields)


def assert_same(a: SavedStream, b: SavedStream) -> None:
    for name in ("family", "seed", "num_chunks", "num_frames", "settings", "format_version", "extra"):
        assert getattr(a, name) == getattr(b, name), name
    assert vars(a.model) == vars(b.model)
    assert set(a.tensors) == set(b.tensors)
    for k in a.tensors:
        assert a.tensors[k].dtype == b.tensors[k].dtype and torch.equal(a.tensors[k], b.tensors[k]), k
    assert b.generator_state.dtype == torch.uint8 and torch.equal(a.generator_state, b.generator_state)
    assert (a.frames is None) == (b.frames is None)
    if a.frames is not None:
        assert torch.equal(a.frames, b.frames)


@pytest.mark.parametrize("with_frames", [False, True])
def test_round_trip_is_exact(tmp_path, with_frames):
    state = a_state(frames=torch.rand(32, 3, 16, 24) if with_frames else None)
    path = tmp_path / "s.safetensors"
    size = write_state(path, state)
    assert size == path.stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]  # no temporary file left
    assert_same(state, read_state(path))
    assert read_header(path)["record"]["format_version"] == FORMAT_VERSION


def test_generator_is_restored_exactly(tmp_path):
    g = make_generator(33)
    torch.randn(1000, generator=g)
    write_state(tmp_path / "s.safetensors", a_state(generator_state=g.get_state(), seed=33))
    restored = make_generator(0, read_state(tmp_path / "s.safetensors").generator_state)  # the seed is not used
    assert torch.equal(torch.randn(4096, generator=restored), torch.randn(4096, generator=g))
    assert torch.equal(torch.rand(7, generator=restored), torch.rand(7, generator=g))


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch

    def broken(tensors, filename, metadata=None):
        open(filename, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        write_state(tmp_path / "s.safetensors", a_state())
    assert list(tmp_path.iterdir()) == []


def _state_after(model, tail, anchor_tokens, gen, prompts_so_far) -> SavedStream:
    return SavedStream(family="streamingt2v", model=MODEL, seed=33, generator_state=gen.get_state(),
                       num_chunks=len(prompts_so_far), num_frames=8 + 8 * len(prompts_so_far),
                       tensors={"cond_frames": tail, "anchor_tokens": anchor_tokens,
                                "anchor_image": torch.zeros(1, 3, 64, 64)},
                       settings={"prompts": list(prompts_so_far), "negative_prompt": "", "steps": STEPS,
                                 "guidance": 7.5, "eta": 1.0, "anchor_source": "test"})


def _split_run(model, frames, anchor_tokens, splits, tmp_path) -> list:
    """Chunks in steps of `splits`, each step continued only from the state file the one before wrote."""
    tail, gen, done, out = frames, make_generator(33), 0, []
    tmp_path.mkdir()
    for i, n in enumerate(splits):
        new = extend_video(model, tail, n, PROMPTS[done:done + n], "", anchor_tokens=anchor_tokens, steps=STEPS,
                           generator=gen)
        out += new
        done += n
        path = tmp_path / f"step{i}.safetensors"
        write_state(path, _state_after(model, torch.cat(new)[-8:], anchor_tokens, gen, PROMPTS[:done]))
        loaded = read_state(path)
        del gen  # nothing but the file carries on
        tail, anchor_tokens = loaded.tensors["cond_frames"], loaded.tensors["anchor_tokens"]
        gen = make_generator(0, loaded.generator_state)
    return out


def test_continuation_equals_the_uninterrupted_run(tiny_model, tmp_path):
    frames = torch.rand(16, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    anchor_tokens = tiny_model.encode_anchor(frames[:1] * 2 - 1)
    whole = torch.cat(extend_video(tiny_model, frames, 4, PROMPTS, "", anchor_tokens=anchor_tokens, steps=STEPS,
                                   seed=33))
    first_two = torch.cat(extend_video(tiny_model, frames, 2, PROMPTS[:2], "", anchor_tokens=anchor_tokens,
                                       steps=STEPS, seed=33))
    assert torch.equal(first_two, whole[:16])
    for splits in ([1, 1], [2, 2], [1, 1, 1, 1]):
        got = torch.cat(_split_run(tiny_model, frames, anchor_tokens, splits, tmp_path / "x".join(map(str, splits))))
        assert torch.equal(got, whole[:got.shape[0]]), splits
    # the check can fail: re-seeding at the split (what chained nodes do by default) gives other frames
    reseeded = torch.cat(extend_video(tiny_model, torch.cat([frames, first_two])[-8:], 2, PROMPTS[2:], "",
                                      anchor_tokens=anchor_tokens, steps=STEPS, seed=33))
    assert not torch.equal(reseeded, whole[16:])


def test_model_identity(tmp_path):
    f = tmp_path / "m.safetensors"
    save_file({"w": torch.arange(400_000, dtype=torch.float32)}, str(f))
    a = model_identity(f, "m.safetensors", torch.float32)
    assert a == model_identity(f, "m.safetensors", "fp32") and a.size == f.stat().st_size
    raw = bytearray(f.read_bytes())
    raw[-100] ^= 1  # inside the last sampled block
    f.write_bytes(bytes(raw))
    b = model_identity(f, "m.safetensors", torch.float32)
    assert b.size == a.size and b.hash != a.hash
    folder = tmp_path / "converted"
    folder.mkdir()
    (folder / "unet.safetensors").write_bytes(bytes(raw))
    c = model_identity(folder, "converted", torch.float16)
    assert c.size == len(raw) and c.hash not in (a.hash, b.hash) and c.dtype == "fp16"


def test_other_weights_or_dtype_are_refused_naming_both_sides():
    other = ModelIdentity(name="other.safetensors", size=123, hash="cd" * 32, dtype="float32")
    msg = identity_problem(MODEL, other)
    assert "tiny_streamingt2v.safetensors" in msg and "other.safetensors" in msg and "load 'tiny_streamingt2v" in msg
    msg = identity_problem(MODEL, ModelIdentity(**dict(vars(MODEL), dtype="float16")))
    assert "float32" in msg and "float16" in msg and "dtype float32" in msg
    assert identity_problem(MODEL, ModelIdentity(**dict(vars(MODEL), name="renamed.safetensors"))) is None


def _rewrite_record(path, **change) -> None:
    head = read_header(path)
    record = dict(head["record"], **change)
    tensors = read_state_tensors(path)
    save_file(tensors, str(path), metadata={META_KEY: json.dumps(record)})


def read_state_tensors(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_newer_format_and_unknown_family_are_refused(tmp_path):
    path = tmp_path / "s.safetensors"
    write_state(path, a_state())
    _rewrite_record(path, format_version=FORMAT_VERSION + 1)
    newer = rf"format {FORMAT_VERSION + 1} is newer .*formats 1 to {FORMAT_VERSION}.*update"
    with pytest.raises(StateError, match=newer):
        read_state(path)
    write_state(path, a_state())
    _rewrite_record(path, family="somefamily")
    with pytest.raises(StateError, match=r"'somefamily' family; this pack knows \['streamingsvd', 'streamingt2v'\]"):
        read_state(path)


def test_truncated_files_are_refused(tmp_path):
    path = tmp_path / "s.safetensors"
    write_state(path, a_state())
    raw = path.read_bytes()
    for cut in (len(raw) - 1, len(raw) // 2, 20):
        path.write_bytes(raw[:cut])
        with pytest.raises(StateError, match=r"truncated .*save the state again"):
            read_state(path)


def test_files_that_are_not_states_are_refused(tmp_path):
    weights = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(3)}, str(weights))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(struct.pack("<Q", 5) + b"nope!")
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"abc")
    for path, why in ((weights, "a safetensors file without the 'streamingt2v_stream_state' record"),
                      (garbage, "its safetensors header is not JSON"),
                      (short, "3 bytes, shorter than a safetensors header")):
        with pytest.raises(StateError, match=rf"not a stream state \({why}.*SaveStreamState wrote"):
            read_state(path)
    with pytest.raises(StateError, match="no such file"):
        read_state(tmp_path / "missing.safetensors")
    # a tensor of a dtype a state never holds (e.g. int64 offsets smuggled in)
    odd = tmp_path / "odd.safetensors"
    write_state(odd, a_state())
    tensors = read_state_tensors(odd)
    tensors["cond_frames"] = torch.zeros(8, 3, 2, 2, dtype=torch.int64)
    save_file(tensors, str(odd), metadata={META_KEY: json.dumps(read_header(tmp_path / "odd.safetensors")["record"])})
    with pytest.raises(StateError, match="stored as"):
        read_state(odd)


class _Trap:
    """Unpickling this creates `marker`: a file proves the loader executed a pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


def test_a_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "executed"
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(pickle.dumps({"generator_state": _Trap(marker)}))
    zipped = tmp_path / "zipped.safetensors"
    torch.save({"generator_state": _Trap(marker)}, str(zipped))
    for path in (plain, zipped):
        with pytest.raises(StateError, match=r"pickle .*never unpickled"):
            read_state(path)
    assert not marker.exists()
    # the pickle bytes as a tensor inside a real state: read as inert bytes, refused as a generator state
    state = tmp_path / "inside.safetensors"
    write_state(state, a_state(generator_state=torch.frombuffer(bytearray(plain.read_bytes()), dtype=torch.uint8)))
    loaded = read_state(state)
    with pytest.raises(StateError, match="generator_state cannot be restored"):
        make_generator(0, loaded.generator_state)
    assert not marker.exists()


def test_missing_family_fields_are_refused(tmp_path):
    state = a_state()
    del state.tensors["anchor_tokens"]
    with pytest.raises(StateError, match=r"lacks \['anchor_tokens'\]"):
        write_state(tmp_path / "s.safetensors", state)
    with pytest.raises(StateError, match="setting 'steps' must be int"):
        write_state(tmp_path / "s.safetensors", a_state(settings=dict(a_state().settings, steps="50")))
