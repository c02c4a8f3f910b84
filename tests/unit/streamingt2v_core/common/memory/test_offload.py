"""Sequential offload (streamingt2v_core.common.memory.offload): parts on the device only while they run, the
same outputs, every part back where it was."""
import pytest
import torch

from streamingt2v_core.common import memory
from tests.support.memory_model import COMPUTE, T2V_PARTS, load_model


@pytest.fixture(scope="module")
def model():
    return load_model()


def test_sequential_offload_refuses_unknown_parts(model):
    with pytest.raises(ValueError, match="no part.*'tokenizer_model'"):
        memory.sequential_offload(model, "cpu", parts=("vae", "tokenizer_model"))


def test_sequential_offload_sends_a_part_away_when_it_raises(model):
    with memory.sequential_offload(model, COMPUTE, T2V_PARTS) as off:
        with pytest.raises(IndexError):
            model.encode_text(torch.full((1, 77), 10 ** 9, dtype=torch.long))  # token id out of the vocabulary
        assert off.moves == [("text_encoder", "cpu:0"), ("text_encoder", "cpu")]
        assert off.placement["text_encoder"] == torch.device("cpu")


def test_refiner_offload_and_feed_forward_chunks_keep_the_video(tmp_path):
    from tools import make_tiny_refiner

    from streamingt2v_core.blending.sdedit import refine_video
    from streamingt2v_core import load_refiner

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
