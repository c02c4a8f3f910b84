"""The StreamingSVD loop (comfy_bridge.svd_stream) on ComfyUI's own SVD model against the official run
(tests/data/svd/ref_long.safetensors: the recorded first chunk, 2 chunks of 4 Euler steps, seed 33).

ComfyUI's SVD MODEL, first-stage VAE and CLIP vision tower come from the tiny checkpoint through
tests/support/comfy_test_nodes/tiny_svd.py (ComfyUI's loaders refuse the tiny widths); the image embedding
is the recorded one in the stream (ComfyUI's CLIP vision runs in fp16) and checked through the tower on its
own. The concat encoder is the pack's
(`conditioner.embedders.3.encoder`, svd_patch.build_concat_encoder): with random weights it differs from the
first-stage encoder, so ComfyUI's habit of encoding the concat with the first-stage VAE would miss.
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


@pytest.fixture(scope="module")
def ref():
    from safetensors.torch import load_file

    return load_file(str(REF))


@pytest.fixture(scope="module")
def loaded(svd_tiny_checkpoint):
    """The tiny checkpoint as ComfyUI's SVD MODEL, first-stage VAE and CLIP vision, and the pack's parts."""
    import_comfy()
    weights = import_pack("streamingt2v_core.svd.weights")
    torch.set_num_threads(max(torch.get_num_threads(), 2))
    from tests.support.comfy_test_nodes.tiny_svd import load_clip_vision, load_first_stage_vae

    return {"model": load_svd(svd_tiny_checkpoint), "parts": weights.read_cam_and_mergers(svd_tiny_checkpoint),
            "vae": load_first_stage_vae(svd_tiny_checkpoint), "clip": load_clip_vision(svd_tiny_checkpoint)}


@pytest.fixture(scope="module")
def run(ref, loaded):
    ss = import_pack("comfy_bridge.svd_stream")
    sp = import_pack("comfy_bridge.svd_patch")
    sigmas = import_pack("streamingt2v_core.svd.sigmas")
    model, parts, vae = loaded["model"], loaded["parts"], loaded["vae"]
    cam, mergers, concat = sp.build_cam(model, parts), sp.build_mergers(model, parts), sp.build_concat_encoder(model, parts)
    first = ref["in/chunk0_uint8"].float() / 255 * 2 - 1
    steps = []
    # the recorded image embedding (fp32) goes in: ComfyUI runs CLIP vision in fp16 (checked on its own below)
    out = ss.stream(model, cam, mergers, concat, vae, first, chunks=2, seed=33, sigmas=sigmas.official_sigmas(4),
                    embedding=ref["chunk1/c/crossattn"][:1], on_step=lambda c, s, t, x0: steps.append((c, s, t)))
    return ss, out, steps, vae, concat, loaded["clip"], first


def test_the_image_embedding_is_the_official_one(run, ref):
    """Frame 6 squashed to 224x224 (official) through ComfyUI's CLIP vision: the recorded embedding within fp16;
    ComfyUI's own encode_image (centre crop, uint8 rounding) would give another one for these 2:1 frames."""
    ss, *_, clip, first = run
    image = first[6][None]
    assert torch.equal(image, ref["chunk1/svd_input_frame"].reshape(image.shape))
    want = ref["chunk1/c/crossattn"][:1]
    assert rel(ss.image_embedding(clip, image), want) <= 2e-3
    cropped = clip.encode_image(((image + 1) / 2).movedim(1, -1))["image_embeds"].float()[:, None]
    assert rel(cropped, want) > 2e-2


def test_the_concat_comes_from_the_conditioners_encoder_not_the_first_stage(run, ref):
    ss, _, _, vae, concat, *_ = run
    cond = ref["chunk1/cond_frames"]
    ours = ss.concat_latent(concat, cond)
    assert rel(ours, ref["chunk1/c/concat"][:1]) <= 1e-5
    # the first-stage encoder (what ComfyUI's SVD_img2vidConditioning uses) gives another latent
    first_stage = vae.encode(((cond + 1) / 2).movedim(1, -1)).float()
    assert rel(first_stage, ref["chunk1/c/concat"][:1]) > 0.1


def test_every_chunk_matches_the_official_run(run, ref):
    _, out, steps, *_ = run
    lat = {c: rel(out.latents[c - 1] * 0.18215, ref[f"chunk{c}/final_latents"]) for c in (1, 2)}
    frames = {c: (out.chunks[c - 1] - ref[f"chunk{c}/frames"]).abs().max().item() for c in (1, 2)}
    print("svd_stream oracle:", lat, frames)
    assert max(lat.values()) <= 1e-3 and max(frames.values()) <= 1 / 255, (lat, frames)
    assert [s[:2] for s in steps] == [(c, s) for c in range(2) for s in range(4)]


def test_the_video_is_the_input_and_18_new_frames_per_chunk(run, ref):
    _, out, *_, first = run
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


@pytest.mark.resume
def test_a_saved_and_loaded_stream_continues_bit_for_bit(loaded, ref, svd_tiny_checkpoint, tmp_path):
    """Through the nodes: 2 chunks in one StreamingSVD Extend == 1 chunk, SaveStreamState, Load StreamingSVD
    State, 1 chunk (another seed, not used: the stream's generator goes on), frame for frame; the state names
    the CAM file and the dtype, and another dtype is refused."""
    import folder_paths

    import_pack("comfy_bridge.models").register_model_folders()
    folder_paths.add_model_folder_path("streamingsvd", str(svd_tiny_checkpoint.parent))
    folder_paths.set_output_directory(str(tmp_path))
    svd, state = import_pack("nodes.svd"), import_pack("nodes.state")
    types = import_pack("nodes.types")
    cam = types.SVDCamWeights(loaded["parts"], svd_tiny_checkpoint.name)
    first = ref["in/chunk0_uint8"].float() / 255  # IMAGE-like [25, H, W, 3] after the permute below
    first = first.permute(0, 2, 3, 1).contiguous()
    sigmas = import_pack("streamingt2v_core.svd.sigmas").official_sigmas(2).float()
    extend = svd.StreamingSVDExtend.execute
    common = dict(model=loaded["model"], cam=cam, clip_vision=loaded["clip"], vae=loaded["vae"], sigmas=sigmas)
    whole = extend(frames_to_add=36, seed=5, frames=first, **common).result[1]
    part = extend(frames_to_add=18, seed=5, frames=first, **common).result[0]
    name = state.SaveStreamState.execute(part, "stream_state/svd_test", False).result[1]
    assert name.endswith(".safetensors [output]") and (tmp_path / name[: -len(" [output]")]).stat().st_size < 2e6
    stream, info = state.LoadStreamingSVDState.execute(cam, loaded["model"], name).result
    assert "1 StreamingSVD chunks, 43 frames" in info
    more = extend(frames_to_add=18, seed=999, stream=stream, **common)
    assert "continued stream: 1 StreamingSVD chunks so far, seed 5" in more.result[2]
    rest = more.result[0].new_frames()
    assert rest.shape == (18, 64, 128, 3) and whole.shape[0] == 61
    assert torch.equal(rest, whole[43:]), (rest - whole[43:]).abs().max()
    # what a re-seeded run would give is another video
    other = extend(frames_to_add=18, seed=999, frames=whole[:43], **common).result[1][43:]
    assert not torch.equal(other, whole[43:])
    # another dtype of the same weights is another stream
    identity = state.saved_from_stream(part, False).model
    half = type(identity)(identity.name, identity.size, identity.hash, "fp16")
    assert "fp16" in (import_pack("streamingt2v_core.stream_state").identity_problem(identity, half) or "")
