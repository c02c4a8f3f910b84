"""StreamingSVD's pure-torch core against the official oracle (tests/data/svd, recorded from the official
code on the tiny random-weight model): the CAM frame encoder, the mergers, the CLIP input, the schedule and
the random draws. Each test reads only the tensors it needs (the tiny checkpoint is memory-mapped)."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from streamingt2v_core.svd import config
from streamingt2v_core.svd.cam import CAMFrameEncoder
from streamingt2v_core.svd.conditioning import cond_frames, control_frames, guide, official_clip_input
from streamingt2v_core.svd.merger import SkipMerger
from streamingt2v_core.svd.noise import ChunkDraws
from streamingt2v_core.svd.sigmas import official_sigmas
from streamingt2v_core.svd.weights import FRAME_ENCODER_PREFIX, merger_prefix, read_cam_and_mergers
from tests.support.svd_tiny import SVD_DATA

pytestmark = pytest.mark.svd_oracle
TOL = 1e-5  # rel-L2 (oracle README: a faithful fp32 port matches to <= 1e-5)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def tensors(name: str, *keys: str) -> dict[str, torch.Tensor]:
    with safe_open(str(SVD_DATA / name), "pt") as f:
        return {k: f.get_tensor(k) for k in keys}


def weights(path, prefix: str) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


def test_cam_frame_encoder_matches_oracle(svd_tiny_checkpoint):
    ref = tensors("ref_denoise.safetensors", "in/ctrl_frames", "int/cam_cond_embedding")
    enc = CAMFrameEncoder.from_state_dict(weights(svd_tiny_checkpoint, FRAME_ENCODER_PREFIX)).eval()
    ctrl = ref["in/ctrl_frames"]  # [1, 7, 3, H, W]; the official repeats it for both halves of the CFG batch
    with torch.no_grad():
        out = enc(ctrl.flatten(0, 1).repeat(2, 1, 1, 1))
    want = ref["int/cam_cond_embedding"]
    assert out.shape == want.shape == (14, config.CAM_CHANNELS, 8, 16)
    assert rel_l2(out, want) <= TOL


@pytest.mark.parametrize("name,tag,cam", [(9, "in09", "int/cam_down_res/09"), (10, "in10", "int/cam_down_res/10"),
                                          (11, "in11", "int/cam_down_res/11"), ("mid", "mid", "int/cam_mid_res")])
def test_merger_matches_oracle(svd_tiny_checkpoint, name, tag, cam):
    ref = tensors("ref_denoise.safetensors", f"int/merger/{tag}/skip_in", f"int/merger/{tag}/out", cam)
    merger = SkipMerger.from_state_dict(weights(svd_tiny_checkpoint, merger_prefix(name))).eval()
    skip, want = ref[f"int/merger/{tag}/skip_in"], ref[f"int/merger/{tag}/out"]
    with torch.no_grad():
        out = merger(skip, ref[cam], config.FRAMES, config.COND_FRAMES)
    assert rel_l2(want, skip) > 0.5  # the merger changes the skip a lot: the comparison is not vacuous
    assert rel_l2(out, want) <= TOL


def test_loader_parts_feed_the_oracle_merger(svd_tiny_checkpoint):
    """read_cam_and_mergers names things as the modules expect: its merger 11 reproduces the oracle too."""
    parts = read_cam_and_mergers(svd_tiny_checkpoint)
    ref = tensors("ref_denoise.safetensors", "int/merger/in11/skip_in", "int/merger/in11/out", "int/cam_down_res/11",
                  "int/cam_in/x")
    with torch.no_grad():
        out = SkipMerger.from_state_dict(parts.mergers[11])(ref["int/merger/in11/skip_in"], ref["int/cam_down_res/11"],
                                                            config.FRAMES, config.COND_FRAMES)
    assert rel_l2(out, ref["int/merger/in11/out"]) <= TOL
    # The CAM UNet takes the 8-channel UNet input (latent + concat), as the recorded CAM input has.
    assert parts.cam_unet["input_blocks.0.0.weight"].shape[1] == ref["int/cam_in/x"].shape[1]


def test_clip_input_matches_oracle_embedding(svd_tiny_checkpoint):
    """The squash-to-224 CLIP input, through the tiny OpenCLIP tower, gives the recorded image embedding
    (torch's own antialiased bicubic would be 4% off: kornia's Gaussian pre-filter is what the official uses)."""
    open_clip_transformer = pytest.importorskip("open_clip.transformer")
    prefix = "conditioner.embedders.0.open_clip.model.visual."
    tower = open_clip_transformer.VisionTransformer(image_size=224, patch_size=32, width=64, layers=2, heads=4,
                                                    mlp_ratio=4.0, output_dim=128)
    tower.load_state_dict(weights(svd_tiny_checkpoint, prefix), strict=True)
    ref = tensors("ref_long.safetensors", "chunk1/cond_frames_without_noise", "chunk1/c/crossattn", "chunk1/uc/crossattn")
    with torch.no_grad():
        emb = tower.eval()(official_clip_input(ref["chunk1/cond_frames_without_noise"]))
    want = ref["chunk1/c/crossattn"]
    assert torch.equal(want, want[:1].expand_as(want))  # one embedding repeated for the 25 frames
    assert rel_l2(emb, want[0]) <= TOL
    assert not ref["chunk1/uc/crossattn"].any()  # uncond crossattn is zero


def test_sigmas_match_oracle():
    ref = tensors("ref_long.safetensors", "chunk1/sigmas", "chunk2/sigmas", *[f"chunk1/step{s}/sigma" for s in range(4)])
    ours = official_sigmas(4)
    assert ours.dtype == torch.float64 and ours.shape == (5,)
    for c in (1, 2):
        # float64 to within a few ulps: the recording's last bits come from its machine's exp/log
        torch.testing.assert_close(ours, ref[f"chunk{c}/sigmas"], rtol=1e-14, atol=0)
        # what the sampler uses (a float32 sigma per row) is bit-identical
        assert torch.equal(ours.float(), ref[f"chunk{c}/sigmas"].float())
    for s in range(4):
        assert torch.equal(ref[f"chunk1/step{s}/sigma"], ours[s].float().expand(config.FRAMES))


def test_chunk_draws_match_oracle_bit_exactly():
    keys = [f"chunk{c}/{n}" for c in (1, 2) for n in ("cond_aug_uniform", "init_noise", "cond_frames",
                                                       "cond_frames_without_noise", "step0/x")]
    ref = tensors("ref_long.safetensors", *keys)
    draws = ChunkDraws(torch.Generator().manual_seed(33), 64, 128)
    for c in (1, 2):
        uniform, noise = draws.next()
        assert torch.equal(uniform, ref[f"chunk{c}/cond_aug_uniform"])
        assert torch.equal(noise, ref[f"chunk{c}/init_noise"])
        assert torch.equal(cond_frames(ref[f"chunk{c}/cond_frames_without_noise"], uniform), ref[f"chunk{c}/cond_frames"])
        sigma0 = official_sigmas(4)[0].float()
        assert torch.equal(noise * torch.sqrt(1.0 + sigma0 ** 2), ref[f"chunk{c}/step0/x"])


def test_guidance_and_carry_over_match_oracle():
    ref = tensors("ref_long.safetensors", "chunk1/step0/denoised_cfg_batch", "chunk1/step0/denoised", "chunk1/frames",
                  "chunk2/ctrl_frames", "chunk1/svd_input_frame", "chunk2/svd_input_frame", "in/chunk0_uint8",
                  "out/video_uint8", "chunk2/frames")
    batch = ref["chunk1/step0/denoised_cfg_batch"]
    guided = guide(batch[:config.FRAMES], batch[config.FRAMES:])
    assert rel_l2(guided, ref["chunk1/step0/denoised"]) <= 1e-6
    # control frames = last 7 of the previous chunk (the official range round trip moves them by <= 6e-8)
    torch.testing.assert_close(control_frames(ref["chunk1/frames"])[None], ref["chunk2/ctrl_frames"], rtol=0, atol=1e-7)
    chunk0 = ref["in/chunk0_uint8"].float() / 255 * 2 - 1
    assert torch.equal(ref["chunk1/svd_input_frame"], chunk0[config.SVD_IMAGE_INDEX])
    assert torch.equal(ref["chunk2/svd_input_frame"], chunk0[config.SVD_IMAGE_INDEX])
    video = ref["out/video_uint8"]
    assert video.shape[0] == config.frames_after(2) == 61
    from streamingt2v_core.svd.conditioning import keep_new_frames

    tail = keep_new_frames(ref["chunk2/frames"])
    as_uint8 = (255 * (tail + 1) / 2).to(torch.uint8).permute(0, 2, 3, 1)  # IImage truncation
    assert torch.equal(as_uint8, video[-config.NEW_FRAMES:])



def test_cam_file_round_trip(svd_tiny_checkpoint, tmp_path):
    """write_cam_file keeps only the 800 CAM / merger tensors (fp16, original names) and the 108 tensors of the
    conditioner's encoder (fp32); reading it back gives the same parts as the full file cast to fp16."""
    from streamingt2v_core.svd.weights import CAM_FILE_FORMAT, concat_encoder_shapes, expected_keys, write_cam_file

    dst = write_cam_file(svd_tiny_checkpoint, tmp_path / "streamingsvd_cam.safetensors", dtype="fp16")
    with safe_open(str(dst), "pt") as f:
        assert set(f.keys()) == expected_keys() | set(concat_encoder_shapes())
        meta = f.metadata()
    assert meta["format"] == "pt" and meta["streamingt2v"] == CAM_FILE_FORMAT and meta["dtype"] == "fp16"
    small = read_cam_and_mergers(dst)
    key = "temporal_transformer.proj_in.weight"
    full = weights(svd_tiny_checkpoint, merger_prefix("mid"))[key]
    assert small.mergers["mid"][key].dtype == torch.float16
    assert torch.equal(small.mergers["mid"][key], full.half())
    assert small.numel() == read_cam_and_mergers(svd_tiny_checkpoint, dtype="fp16").numel()
    enc = "encoder.conv_in.weight"
    assert small.concat_encoder[enc].dtype == torch.float32  # the official encodes the concat image in fp32
    assert torch.equal(small.concat_encoder[enc], weights(svd_tiny_checkpoint, "conditioner.embedders.3.encoder.")[enc])


def test_the_converter_cli_writes_a_cam_file_and_refuses_bad_input(svd_tiny_checkpoint, tmp_path, capsys):
    from streamingt2v_core.svd.convert import main

    dst = tmp_path / "cam.safetensors"
    assert main([str(svd_tiny_checkpoint), str(dst), "--dtype", "bf16"]) == 0
    assert read_cam_and_mergers(dst).mergers["mid"]["temporal_transformer.proj_in.weight"].dtype == torch.bfloat16
    assert main([str(svd_tiny_checkpoint), str(dst)]) == 2 and "exists; pass --force" in capsys.readouterr().err
    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.x": torch.zeros(1), "conditioner.y": torch.zeros(1)}, str(plain))
    assert main([str(plain), str(tmp_path / "out.safetensors")]) == 2
    assert "plain SVD checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()
