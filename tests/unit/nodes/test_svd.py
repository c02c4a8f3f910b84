"""StreamingSVD nodes (nodes/svd.py), in-process with ComfyUI importable."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.support.paths import ROOT

from tests.support.comfy_inproc import import_pack


DATA = ROOT / "tests" / "data" / "svd"
pytestmark = pytest.mark.svd_oracle  # compares with the official recording


@pytest.fixture(scope="module")
def svd_nodes():
    import_pack("comfy_bridge.models").register_model_folders()  # what the pack's __init__ does on load
    return import_pack("nodes.svd")


def test_sigmas_node_gives_the_official_schedule_not_cores_ays(svd_nodes):
    node = svd_nodes.StreamingSVDSigmas
    schema = node.define_schema()
    assert schema.node_id == "StreamingSVDSigmas" and [i.id for i in schema.inputs] == ["steps"]
    sigmas = node.execute(4).result[0]
    assert sigmas.dtype == torch.float32 and sigmas.shape == (5,)
    # the schedule the official code recorded for 4 steps, as the float32 its sampler steps through
    recorded = load_file(str(DATA / "ref_long.safetensors"))["chunk1/sigmas"]
    assert torch.equal(sigmas, recorded.float())
    # core's AlignYourStepsScheduler(SVD, 4) makes another schedule from the same anchors
    from comfy_extras import nodes_align_your_steps as ays

    core = ays.loglinear_interp(ays.NOISE_LEVELS["SVD"], 5)
    assert abs(float(core[1]) - float(sigmas[1])) > 1.0
    assert node.execute(30).result[0].shape == (31,)


# Node ids and input order are a contract with saved workflows: add inputs at the end only.
SVD_INPUTS = {
    "LoadStreamingSVDCAM": ["cam_name"],
    "StreamingSVDExtend": ["model", "cam", "clip_vision", "vae", "frames", "frames_to_add", "seed", "image", "sigmas",
                           "sampler", "stream"],
}


@pytest.mark.parametrize("node_id", sorted(SVD_INPUTS))
def test_svd_node_inputs_in_order(svd_nodes, node_id):
    (node,) = [n for n in svd_nodes.SVD_NODES if n.define_schema().node_id == node_id]
    schema = node.define_schema()
    assert [i.id for i in schema.inputs] == SVD_INPUTS[node_id]
    if node_id == "StreamingSVDExtend":
        assert [o.io_type for o in schema.outputs] == ["STREAMINGT2V_STREAM", "IMAGE", "STRING"]
        optional = [i.id for i in schema.inputs if i.optional]
        assert optional == ["frames", "image", "sigmas", "sampler", "stream"]
        assert {i.id: i.default for i in schema.inputs if i.id in ("frames_to_add", "seed")} == \
            {"frames_to_add": 90, "seed": 33}


def frames(n, height=64, width=128):
    return torch.rand(n, height, width, 3)


@pytest.mark.parametrize("n,h,w,image,words", [
    (6, 64, 128, None, ("frames: 6 frame(s) given, at least 7",)),
    (25, 64, 100, None, ("frames: 100x64 pixels", "multiples of 64")),
    (25, 64, 128, (1, 64, 64, 3), ("image: 64x64 pixels, the frames are 128x64",)),
])
def test_bad_video_input_is_named_before_any_model_is_requested(svd_nodes, n, h, w, image, words):
    node = svd_nodes.StreamingSVDExtend
    video = frames(n, h, w)
    img = None if image is None else torch.rand(image)
    problem = node.input_problem(video, 18, img)
    assert problem is not None and all(word in problem for word in words), problem
    # the loaders (lazy inputs) are never requested for it, and execute raises it at once
    assert node.check_lazy_status(frames=video, frames_to_add=18, image=img) == []
    with pytest.raises(ValueError, match="frames|image"):
        node.execute(None, None, None, None, 18, 33, frames=video, image=img)


def test_frames_or_a_streamingsvd_stream_not_both_not_neither(svd_nodes):
    types = import_pack("nodes.types")
    node = svd_nodes.StreamingSVDExtend
    video = frames(25)
    t2v_stream = types.StreamState(chunks=(video,))
    with pytest.raises(ValueError, match="frames / stream: both are connected"):
        node.execute(None, None, None, None, 18, 33, frames=video, stream=t2v_stream)
    with pytest.raises(ValueError, match="frames: connect the video to extend"):
        node.execute(None, None, None, None, 18, 33)
    with pytest.raises(ValueError, match="stream: not a StreamingSVD stream"):
        node.execute(None, None, None, None, 18, 33, stream=t2v_stream)
    assert node.check_lazy_status(frames_to_add=18, stream=t2v_stream) == []


def test_good_input_requests_the_models(svd_nodes):
    node = svd_nodes.StreamingSVDExtend
    assert node.check_lazy_status(frames=frames(7), frames_to_add=1) == ["model", "cam", "clip_vision", "vae"]
    assert node.check_lazy_status(model=1, cam=2, clip_vision=3, vae=4, frames=frames(7), frames_to_add=1) == []
    assert node.input_problem(frames(25), 1) is None
    assert "frames_to_add: 0" in node.validate_inputs(frames_to_add=0)
    assert node.validate_inputs(frames_to_add=18) is True


def test_a_model_that_is_not_svd_is_refused(svd_nodes):
    import comfy.model_base

    class NotSVD:
        model = object.__new__(comfy.model_base.BaseModel)

    class SVD:
        model = object.__new__(comfy.model_base.SVD_img2vid)

    problem = svd_nodes.StreamingSVDExtend.model_problem(NotSVD())
    assert "this MODEL is BaseModel" in problem and "Image Only Checkpoint Loader" in problem
    assert svd_nodes.StreamingSVDExtend.model_problem(SVD()) is None


def test_one_svd_image_per_chunk_the_last_carries_on(monkeypatch):
    """stream() with K SVD images: chunk c is conditioned on image min(c, K-1) (its embedding and its concat);
    sampling, decoding and the patch are stubbed: only the loop's choice of image is under test."""
    ss = import_pack("comfy_bridge.svd_stream")
    seen = {"embedded": [], "concat": []}
    monkeypatch.setattr(ss, "image_embedding", lambda clip, img: seen["embedded"].append(img.mean().item())
                        or torch.full((1, 1, 4), img.mean().item()))
    monkeypatch.setattr(ss, "concat_latent", lambda enc, px: seen["concat"].append(round(px.mean().item(), 1))
                        or torch.zeros(1, 4, 8, 16))
    monkeypatch.setattr(ss, "with_linear_guidance", lambda model: model)
    monkeypatch.setattr(ss, "streaming_svd_patch", lambda model, cam, mergers, ctrl: model)
    monkeypatch.setattr(ss.comfy.sample, "sample_custom", lambda *a, **k: torch.zeros(25, 4, 8, 16))
    monkeypatch.setattr(ss, "decode_frames", lambda vae, lat: torch.zeros(25, 3, 64, 128))
    images = torch.stack([torch.full((3, 64, 128), v) for v in (-0.5, 0.0, 0.5)])
    out = ss.stream(object(), None, None, None, None, torch.zeros(25, 3, 64, 128), chunks=5, seed=1,
                    clip_vision=object(), image=images[:2])
    assert seen["embedded"] == [-0.5, 0.0]  # each image embedded once
    assert seen["concat"] == [-0.5, 0.0, 0.0, 0.0, 0.0]  # the augmentation noise is 0.02 U: means stay put
    assert out.frames.shape[0] == 25 + 5 * 18
    with pytest.raises(ValueError, match="one embedding is given for several"):
        ss.stream(object(), None, None, None, None, torch.zeros(25, 3, 64, 128), chunks=1, seed=1,
                  embedding=torch.zeros(1, 1, 4), image=images)
