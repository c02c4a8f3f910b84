"""Randomized blending inside core ComfyUI's own context-window handler (comfy_bridge/context_fuse.py),
in-process against the ComfyUI of this leg (0.3.75, or 0.33.0 via $COMFYUI_PATH): no server needed."""
from __future__ import annotations

import types

import pytest
import torch

from tests.support.comfy_inproc import import_comfy, import_pack

pytestmark = [pytest.mark.native_blend, pytest.mark.compat]


@pytest.fixture(scope="module")
def cf():
    import_comfy()
    return import_pack("comfy_bridge.context_fuse")


@pytest.fixture(scope="module")
def cuts():
    from streamingt2v_core.blending import cuts

    return cuts


class StubLatentFormat:
    latent_dimensions = 3
    temporal_downscale_ratio = 4


def stub_base_model(latent_format):
    """What core's handler reads from a BaseModel: its latent format, and (0.33) the cond resize hook."""
    return types.SimpleNamespace(latent_format=latent_format,
                                 resize_cond_for_context_window=lambda *a, **k: None)


class StubPatcher:
    """A MODEL for randomized_blend_windows: clone() and the wrapper registry of a ModelPatcher."""

    def __init__(self, latent_format):
        self.model = stub_base_model(latent_format)
        self.model_options = {"transformer_options": {}}
        self.wrappers = {}

    def clone(self):
        n = StubPatcher(self.model.latent_format)
        n.model_options = {"transformer_options": {}}
        return n

    def add_wrapper_with_key(self, kind, key, fn):
        self.wrappers.setdefault(kind, {}).setdefault(key, []).append(fn)


def run_step(handler, model, x, step, sigmas, marks):
    """One handler call at sampler step `step`; every window answers with a constant that names it (its first
    frame, +1000 for the uncond row), so the result shows which window each frame took."""
    def calc_cond_batch(_model, conds, x_in, timestep, model_options):
        window = model_options["transformer_options"]["context_window"]
        marks.append(list(window.index_list))
        return [torch.full_like(x_in, float(window.index_list[0]) + 1000.0 * i) for i in range(len(conds))]

    options = {"transformer_options": {"sample_sigmas": sigmas}}
    t = sigmas[step:step + 1].expand(x.shape[0]) if handler.dim == 0 else sigmas[step:step + 1]
    return handler.execute(calc_cond_batch, model, [[{}], [{}]], x, t, options)


@pytest.mark.parametrize("dim,schedule", [(2, "standard_static"), (2, "standard_uniform"), (0, "standard_static")])
def test_every_frame_takes_exactly_one_windows_prediction(cf, cuts, dim, schedule):
    frames, length, overlap, seed = 30, 8, 3, 1234
    patched = cf.randomized_blend_windows(StubPatcher(StubLatentFormat()), length, overlap, seed,
                                          "latent frames" and "auto" if dim == 2 else "batch (0): AnimateDiff, SVD",
                                          "latent frames", schedule)
    handler = patched.model_options["context_handler"]
    assert handler.dim == dim and handler.context_length == length and handler.context_overlap == overlap
    shape = [1, 4, frames, 2, 2] if dim == 2 else [frames, 4, 2, 2]
    x = torch.zeros(shape)
    sigmas = torch.linspace(1.0, 0.0, 11)
    seen_layouts = set()
    for step in range(10):
        marks = []
        cond, uncond = run_step(handler, patched.model, x, step, sigmas, marks)
        spans = sorted({(w[0], w[0] + len(w)) for w in marks})
        seen_layouts.add(tuple(spans))
        expect = cuts.step_owners(frames, spans, seed, step)
        starts = torch.tensor([s for s, _ in spans], dtype=torch.float32)[expect]
        per_frame = cond.movedim(dim, 0).reshape(frames, -1)
        # each frame is one window's value exactly (no mix), the window the core's cuts give, cond = uncond
        assert torch.equal(per_frame, starts[:, None].expand_as(per_frame)), step
        assert torch.equal(uncond - 1000.0, cond)
    if schedule == "standard_uniform":
        assert len(seen_layouts) > 1  # the uniform schedule really moved its windows


def test_cuts_change_with_the_step_and_repeat_with_the_seed(cf):
    frames = 40
    outs = {}
    for seed in (5, 5, 6):
        patched = cf.randomized_blend_windows(StubPatcher(StubLatentFormat()), 12, 6, seed, "auto", "latent frames")
        handler = patched.model_options["context_handler"]
        x = torch.zeros(1, 1, frames, 1, 1)
        sigmas = torch.linspace(1.0, 0.0, 5)
        outs.setdefault(seed, []).append(torch.stack([run_step(handler, patched.model, x, s, sigmas, [])[0].flatten()
                                                      for s in range(4)]))
    a, b = outs[5]
    assert torch.equal(a, b)
    assert not torch.equal(a, outs[6][0])
    assert any(not torch.equal(a[0], a[s]) for s in range(1, 4))


def test_lengths_in_video_frames_convert_with_the_temporal_compression(cf):
    patched = cf.randomized_blend_windows(StubPatcher(StubLatentFormat()), 81, 32, 0)
    h = patched.model_options["context_handler"]
    assert (h.context_length, h.context_overlap, h.dim) == (21, 8, 2)


def test_a_known_family_without_the_ratio_attribute_uses_the_table(cf):
    Wan21 = type("Wan21", (), {"latent_dimensions": 3})
    h = cf.randomized_blend_windows(StubPatcher(Wan21()), 33, 8, 0).model_options["context_handler"]
    assert (h.context_length, h.context_overlap) == (9, 2)
    LTXV = type("LTXV", (), {"latent_dimensions": 3})
    h = cf.randomized_blend_windows(StubPatcher(LTXV()), 97, 24, 0).model_options["context_handler"]
    assert (h.context_length, h.context_overlap) == (13, 3)


def test_a_family_whose_frame_dim_is_unknown_is_refused(cf):
    Audio = type("StableAudio1", (), {"latent_dimensions": 1})
    with pytest.raises(ValueError, match="frame_dim: cannot tell"):
        cf.randomized_blend_windows(StubPatcher(Audio()), 16, 4, 0)
    Odd = type("OddVideo", (), {"latent_dimensions": 3})
    with pytest.raises(ValueError, match="length_unit"):
        cf.randomized_blend_windows(StubPatcher(Odd()), 16, 4, 0)
    # told explicitly, both work
    h = cf.randomized_blend_windows(StubPatcher(Audio()), 16, 4, 0, "time (2): Wan, LTXV, HunyuanVideo",
                                    "latent frames").model_options["context_handler"]
    assert h.dim == 2


@pytest.mark.parametrize("length,overlap,msg", [(16, 16, "smaller than context_length"),
                                                (16, 20, "smaller than context_length"),
                                                (16, 0, "at least 1")])
def test_bad_window_sizes_are_refused(cf, length, overlap, msg):
    with pytest.raises(ValueError, match=msg):
        cf.randomized_blend_windows(StubPatcher(StubLatentFormat()), length, overlap, 0, "auto", "latent frames")
    # video frames that collapse in latent frames: 4 video frames -> 1 latent frame, overlap 1
    with pytest.raises(ValueError, match="in latent frames"):
        cf.randomized_blend_windows(StubPatcher(StubLatentFormat()), 4, 2, 0)


def test_the_node_refuses_overlap_at_validation():
    import_comfy()
    node = import_pack("nodes.context").RandomizedBlendContextWindows
    assert node.validate_inputs(context_length=16, context_overlap=4) is True
    problem = node.validate_inputs(context_length=16, context_overlap=16)
    assert isinstance(problem, str) and "context_overlap" in problem
