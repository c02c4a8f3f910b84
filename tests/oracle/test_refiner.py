"""MS-Vid2Vid-XL refiner against the official oracle (tests/data/refiner, sliced from oracle/refiner)."""
import pytest
import torch

from streamingt2v_core.blending.sdedit import refine_latents
from streamingt2v_core.enhancers.ms_vid2vid.schedule import VPSchedule
from streamingt2v_core.enhancers.ms_vid2vid.solver import BrownianNoise
from streamingt2v_core.enhancers.ms_vid2vid.text import OpenCLIPTextEncoder
from tools import make_tiny_refiner


def test_schedule_and_steps_match_oracle(oracle):
    sched = VPSchedule()
    plan = sched.trailing_plan(30, t_max=599)
    # float32 log/exp round differently by CPU (the CI machine's vector libm differs by a few ulp): a few ulp, not 0
    torch.testing.assert_close(plan.sigmas, oracle["blend/solver/sigmas"], rtol=2e-6, atol=1e-6)
    steps_t = torch.cat([oracle[f"blend/step{i:02d}/t"] for i in range(30)])
    assert torch.equal(plan.timesteps, steps_t)
    a, s = sched.alpha_sigma(torch.tensor([599]))
    assert abs(float(a) - 0.23347324) < 1e-7 and abs(float(s) - 0.97236323) < 1e-7
    assert float(sched.sigmas[-1]) == 1.0  # zero terminal SNR


def test_brownian_tree_regenerates_recorded_increments(oracle):
    sig = oracle["blend/solver/sigmas"]
    x = oracle["blend/in/noised"] * sig[0]
    tree = BrownianNoise(x, sig[sig > 0].min(), sig.max(), seed=0)
    for i in (0, 14, 28):
        torch.testing.assert_close(tree(sig[i], sig[i + 1]), oracle[f"blend/step{i:02d}/bt_noise"], rtol=0, atol=0)


@pytest.mark.parametrize("call", ["callA", "callB"])
def test_predict_x0_matches_oracle(tiny_official, oracle, call):
    p = f"denoise/{call}"
    xt, t = oracle[f"{p}/in/xt"], oracle[f"{p}/in/t"]
    y, y_neg = oracle["denoise/ctx/y"], oracle["denoise/ctx/y_neg"]
    x0 = tiny_official.predict_x0(xt, t, y, y_neg, guidance=7.5, rescale=0.2)
    assert (x0 - oracle[f"{p}/out/x0"]).abs().max() <= 1e-3
    d = tiny_official.denoise(xt, t, y, y_neg)
    assert (d["y_out"] - oracle[f"{p}/out/y_out"]).abs().max() <= 1e-4
    assert (d["u_out"] - oracle[f"{p}/out/u_out"]).abs().max() <= 1e-4
    assert (d["out"] - oracle[f"{p}/out/out_guided"]).abs().max() <= 1e-3


def test_refine_latents_matches_oracle(tiny_official, oracle):
    """30 official steps on 40 frames with the recorded cuts and Brownian increments (about 3 min on 1 CPU)."""
    offsets = torch.stack([oracle[f"blend/step{i:02d}/offsets"] for i in range(30)])
    noise = [oracle[f"blend/step{i:02d}/bt_noise"] for i in range(29)]
    seen = {}
    out = refine_latents(tiny_official, oracle["blend/in/noised"], oracle["denoise/ctx/y"], oracle["denoise/ctx/y_neg"],
                         chunk=24, overlap=8, steps=30, t_start=599, offsets=offsets, brownian_noise=noise,
                         callback=lambda i, n, x0: seen.__setitem__(i, x0))
    assert out.shape == (1, 4, 40, 10, 16)
    assert (out - oracle["blend/out/latents"]).abs().max() <= 5e-3
    for i in range(30):
        assert (seen[i] - oracle[f"blend/step{i:02d}/x0_blended"]).abs().max() <= 5e-3, i


def test_text_encoder_matches_oracle(tmp_path, oracle):
    state = make_tiny_refiner.tiny_component("text_encoder")
    enc = OpenCLIPTextEncoder.from_state_dict(state)
    assert len(enc.transformer.resblocks) == 1  # 2-layer tower, run to its penultimate layer
    ids = OpenCLIPTextEncoder.tokenize(["A cat running on the street, ", ""])
    assert torch.equal(ids[:1], oracle["forward/text/tokens_pos"])
    assert torch.equal(ids[1:], oracle["forward/text/tokens_neg"])
    with torch.no_grad():
        emb = enc(ids)
    assert (emb[:1] - oracle["forward/text/y"]).abs().max() <= 1e-4
    assert (emb[1:] - oracle["forward/text/negative_y"]).abs().max() <= 1e-4


def test_autoencoder_matches_oracle(oracle):
    from streamingt2v_core.enhancers.ms_vid2vid.vae import build_autoencoder

    state = make_tiny_refiner.tiny_component("autoencoder")
    state["model.diffusion_model.decoy"] = torch.zeros(1)  # other keys of the SD .ckpt are ignored
    vae = build_autoencoder(state)
    frames = oracle["forward/in/frames_uint8"].permute(0, 3, 1, 2).float()
    with torch.no_grad():
        dist = vae.encode((frames / 255 - 0.5) / 0.5).latent_dist
        decoded = vae.decode(oracle["forward/vae/dec_in"]).sample
    assert (dist.mean - oracle["forward/vae/enc_mean"]).abs().max() <= 1e-3
    assert (dist.std - oracle["forward/vae/enc_std"]).abs().max() <= 1e-3
    assert (decoded - oracle["forward/out/video"][0].permute(1, 0, 2, 3)).abs().max() <= 1e-4
