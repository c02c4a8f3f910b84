"""Memory modes and the plan (streamingt2v_core.common.memory.plan): which plan each mode picks, what the plan
holds, and that running under it keeps the outputs and restores the model."""
import pytest
import torch

from streamingt2v_core.common import memory
from tests.support.memory_model import COMPUTE, T2V_PARTS, assert_same, load_model, model_inputs, run_all


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def inputs(model):
    return model_inputs(model)


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
    with memory.low_memory(model, COMPUTE, T2V_PARTS, feed_forward_chunk=64) as off:
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


# -- the plan (what the heavy nodes run) -------------------------------------------------------------

GiB = 2 ** 30


def test_low_plan_offloads_the_given_parts_and_runs_small():
    p = memory.plan("low vram", True, 100 * GiB, 1, parts=T2V_PARTS, per_chunk_bytes=GiB)
    assert p == memory.MemoryPlan(low=True, offload_parts=T2V_PARTS, feed_forward_chunk=memory.FEED_FORWARD_CHUNK,
                                  rows_together=False, chunk_batch=1)
    assert isinstance(p.offload_parts, tuple)  # a list from the caller becomes a tuple: the plan is frozen
    assert memory.plan("low vram", False, 0, 0, parts=list(T2V_PARTS)).offload_parts == T2V_PARTS
    # "auto" on an accelerator that cannot hold the fast plan: the same low plan
    assert memory.plan("auto", True, 9 * GiB, 10 * GiB, parts=T2V_PARTS, per_chunk_bytes=GiB) == p


def test_fast_plan_offloads_nothing_and_batches_what_fits():
    # 80% of 10 GiB free is 8 GiB; at 3 GiB a chunk that is 2 chunks per call (not 3, not 8 // 3.0 rounded up)
    p = memory.plan("max speed", True, 10 * GiB, 10 ** 15, parts=T2V_PARTS, per_chunk_bytes=3 * GiB)
    assert p == memory.MemoryPlan(low=False, offload_parts=(), feed_forward_chunk=None, rows_together=True,
                                  chunk_batch=2)
    assert memory.plan("auto", True, 10 * GiB, 10 * GiB, parts=T2V_PARTS, per_chunk_bytes=GiB).chunk_batch == 8
    tenth = GiB // 10
    assert memory.plan("auto", True, 10 * GiB, 1, per_chunk_bytes=tenth).chunk_batch == int(0.8 * 10 * GiB) // tenth
    # never below one chunk, even when a chunk alone is larger than the free memory
    assert memory.plan("max speed", True, GiB, 0, per_chunk_bytes=100 * GiB).chunk_batch == 1
    # no per-chunk figure, or not on an accelerator (CPU: "auto" never offloads): one chunk per call
    assert memory.plan("max speed", True, 100 * GiB, 0).chunk_batch == 1
    cpu = memory.plan("auto", False, 0, 10 ** 15, parts=T2V_PARTS, per_chunk_bytes=1)
    assert not cpu.low and cpu.offload_parts == () and cpu.chunk_batch == 1


def test_plan_refuses_a_bad_mode_with_the_node_message():
    with pytest.raises(ValueError, match="memory: 'tiny'.*'auto', 'max speed', 'low vram'"):
        memory.plan("tiny", True, 1, 1)


def test_describe_says_which_plan():
    low = memory.plan("low vram", True, 0, 0, parts=("vae",))
    assert "low-memory" in low.describe() and "vae" in low.describe() and "16384" in low.describe()
    fast = memory.plan("max speed", True, 10 * GiB, 0, per_chunk_bytes=GiB)
    assert fast.describe().startswith("fast plan") and "8 chunk(s)" in fast.describe()


def test_applied_runs_the_low_plan_and_nothing_for_the_fast_one(model, inputs):
    from diffusers.models.attention import FeedForward

    ffs = [m for m in model.modules() if isinstance(m, FeedForward)]
    ref = run_all(model, inputs)
    low = memory.plan("low vram", True, 0, 0, parts=("text_encoder", "vae"))
    with memory.applied(low, model, COMPUTE) as off:
        assert all("forward" in m.__dict__ for m in ffs)
        out = run_all(model, inputs)
    assert_same(ref, out)
    assert {m[0] for m in off.moves} == {"text_encoder", "vae"}  # only the plan's parts moved
    assert off.offload_device == torch.device("cpu")
    assert not any("forward" in m.__dict__ for m in ffs) and "decode" not in model.vae.__dict__
    fast = memory.plan("max speed", True, 0, 0)
    with memory.applied(fast, model, COMPUTE) as nothing:
        assert nothing is None and not any("forward" in m.__dict__ for m in ffs)
        assert not model.text_encoder._forward_pre_hooks
    with memory.applied(low, model, COMPUTE, offload_device=torch.device("cpu", 1)) as off:
        model.encode_prompt(["a"])
    assert ("text_encoder", "cpu:1") in off.moves
