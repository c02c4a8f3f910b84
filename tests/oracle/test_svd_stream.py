"""The StreamingSVD loop (comfy_bridge.svd_stream) on ComfyUI's own SVD model against the official run
(tests/data/svd/ref_long.safetensors: the recorded first chunk, 2 chunks of 4 Euler steps, seed 33).

ComfyUI's model comes from the tiny checkpoint as in test_svd_patch (its loader refuses the tiny widths).
The tiny OpenCLIP tower does not load through ComfyUI's CLIP-vision loader, so the recorded image embedding
goes in. The two VAEs are ComfyUI's classes with the tiny widths (ComfyUI's VAE detection hard-codes ch 128):
the concat encoder is `conditioner.embedders.3.encoder` (a plain AutoencoderKL, through comfy.sd.VAE with a
config) — with random weights it differs from the first-stage encoder, so ComfyUI's habit of encoding the
concat with the first-stage VAE would miss; the first stage is ComfyUI's AutoencodingEngine with its
temporal VideoDecoder, set into a comfy.sd.VAE object.
"""
from __future__ import annotations

import pytest
import torch

from tests.oracle.test_svd_patch import load_svd, rel
from tests.support.comfy_inproc import import_comfy, import_pack
from tests.support.paths import DATA

# not `compat`: 75 s of setup; it passed on ComfyUI 0.33.0 too (4 passed), and the CAM patch test covers that leg
pytestmark = [pytest.mark.svd_oracle]

REF = DATA / "svd" / "ref_long.safetensors"
DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
            "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def prefixed(sd, prefix):
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def tiny_vaes(path):
    """(first-stage VAE, concat-encoder VAE) of the tiny checkpoint as comfy.sd.VAE objects."""
    import comfy.model_patcher
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencodingEngine
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys = [k for k in f.keys() if k.startswith(("first_stage_model.", "conditioner.embedders.3.encoder."))]
        sd = {k: f.get_tensor(k) for k in keys}
    cfg = {"params": {"embed_dim": 4, "ddconfig": DDCONFIG}}
    concat_vae = comfy.sd.VAE(sd=prefixed(sd, "conditioner.embedders.3.encoder."), config=cfg)
    engine = AutoencodingEngine(
        regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
        encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": DDCONFIG},
        decoder_config={"target": "comfy.ldm.modules.temporal_ae.VideoDecoder",
                        "params": dict(DDCONFIG, video_kernel_size=[3, 1, 1], alpha=0.0)}).eval()
    engine.load_state_dict(prefixed(sd, "first_stage_model."), strict=True)
    # a comfy.sd.VAE for the temporal tiny first stage: built by config (the plain AutoencoderKL), then holding
    # ComfyUI's temporal engine instead (comfy.sd.VAE's detection knows only the real widths)
    vae = comfy.sd.VAE(sd=prefixed(sd, "conditioner.embedders.3.encoder."), config=cfg)
    vae.first_stage_model = engine.to(vae.vae_dtype)
    vae.patcher = comfy.model_patcher.ModelPatcher(engine, load_device=vae.device,
                                                   offload_device=vae.patcher.offload_device)
    vae.size = None
    return vae, concat_vae, sd


@pytest.fixture(scope="module")
def ref():
    from safetensors.torch import load_file

    return load_file(str(REF))


@pytest.fixture(scope="module")
def run(ref, svd_tiny_checkpoint):
    import_comfy()
    ss = import_pack("comfy_bridge.svd_stream")
    sp = import_pack("comfy_bridge.svd_patch")
    weights = import_pack("streamingt2v_core.svd.weights")
    sigmas = import_pack("streamingt2v_core.svd.sigmas")
    torch.set_num_threads(max(torch.get_num_threads(), 2))
    model = load_svd(svd_tiny_checkpoint)
    parts = weights.read_cam_and_mergers(svd_tiny_checkpoint)
    cam, mergers = sp.build_cam(model, parts), sp.build_mergers(model, parts)
    del parts
    vae, concat_vae, vae_sd = tiny_vaes(svd_tiny_checkpoint)
    first = ref["in/chunk0_uint8"].float() / 255 * 2 - 1
    steps = []
    out = ss.stream(model, cam, mergers, vae, first, chunks=2, seed=33, sigmas=sigmas.official_sigmas(4),
                    embedding=ref["chunk1/c/crossattn"][:1], concat_vae=concat_vae,
                    on_step=lambda c, s, t, x0: steps.append((c, s, t)))
    return ss, out, steps, vae, concat_vae, vae_sd, first


def test_the_two_encoders_differ_so_the_concat_needs_the_conditioners(run, ref):
    ss, _, _, vae, concat_vae, sd, _ = run
    a = sd["first_stage_model.encoder.conv_in.weight"]
    assert not torch.equal(a, sd["conditioner.embedders.3.encoder.encoder.conv_in.weight"])
    cond = ref["chunk1/cond_frames"]
    ours = ss.concat_latent(concat_vae, cond)
    assert rel(ours, ref["chunk1/c/concat"][:1]) <= 1e-5
    # the first-stage encoder (what ComfyUI's SVD_img2vidConditioning uses) would give another latent
    assert rel(ss.concat_latent(vae, cond), ref["chunk1/c/concat"][:1]) > 0.1


def test_every_chunk_matches_the_official_run(run, ref):
    _, out, steps, *_ = run
    lat = {c: rel(out.latents[c - 1] * 0.18215, ref[f"chunk{c}/final_latents"]) for c in (1, 2)}
    frames = {c: (out.chunks[c - 1] - ref[f"chunk{c}/frames"]).abs().max().item() for c in (1, 2)}
    print("svd_stream oracle:", lat, frames)
    assert max(lat.values()) <= 1e-3 and max(frames.values()) <= 1 / 255, (lat, frames)
    assert [s[:2] for s in steps] == [(c, s) for c in range(2) for s in range(4)]


def test_the_video_is_the_input_and_18_new_frames_per_chunk(run, ref):
    _, out, _, _, _, _, first = run
    assert out.frames.shape == (25 + 2 * 18, 3, 64, 128)
    assert torch.equal(out.frames[:25], first)
    assert torch.equal(out.frames[25:43], out.chunks[0][7:]) and torch.equal(out.frames[43:], out.chunks[1][7:])
    # the official uint8 video (IImage truncation of 255 (x + 1) / 2)
    video = (255 * (out.frames + 1) / 2).to(torch.uint8).permute(0, 2, 3, 1)
    diff = (video.int() - ref["out/video_uint8"].int()).abs()
    assert diff.max().item() <= 1


def test_chunk_2_is_conditioned_on_chunk_1(run, ref):
    # the control frames of chunk 2 are the last 7 frames of chunk 1, as recorded
    _, out, *_ = run
    assert (out.chunks[0][-7:] - ref["chunk2/ctrl_frames"][0]).abs().max().item() <= 1 / 255
