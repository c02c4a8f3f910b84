"""Activation memory (streamingt2v_core.common.memory.estimate): the meta-device peak of live tensors, fused
vs math attention, and the refiner chunk estimate built on it against the bytes a real run allocates."""
import torch
import torch.nn.functional as F

from streamingt2v_core.common import memory


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


def test_refiner_chunk_estimate_follows_the_measured_peak(tmp_path):
    """The meta-device estimate the refiner node sizes its batches with equals what the same call allocates
    for real (CPU, fp32, counted by LiveTensorBytes); feed-forward chunks lower it; guidance rows double it."""
    from tools import make_tiny_refiner

    from streamingt2v_core.blending.sdedit import chunk_activation_bytes
    from streamingt2v_core import load_refiner

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
