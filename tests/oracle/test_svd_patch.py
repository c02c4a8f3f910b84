"""StreamingSVD's CAM and mergers as a patch on ComfyUI's own SVD model (comfy_bridge.svd_patch), against the
official implementation's recorded denoiser call (tests/data/svd/ref_denoise.safetensors, one CFG batch at
sigma = 700: rows 0-24 uncond, 25-49 cond).

ComfyUI builds the SVD_img2vid MODEL from the tiny checkpoint with its own loader's steps (once per module:
2 GB): load_checkpoint_guess_config itself refuses the tiny layout (context_dim 128 and channel_mult 1,2,1,1
match no supported model; the real file detects as SVD_img2vid), so the test names the model config and
does the rest as load_state_dict_guess_config does. The pack reads the CAM and mergers from the same file.
The call goes through the patched MODEL's apply_model with the transformer_options the sampler would hand
it (model_options + the MODEL's wrappers, merged by comfy.sampler_helpers.prepare_model_patcher), so the
wrapper and the output-block patch run as in sampling.
"""
from __future__ import annotations

import copy

import pytest
import torch

from tests.support.comfy_inproc import import_comfy, import_pack
from tests.support.paths import DATA

pytestmark = [pytest.mark.svd_oracle, pytest.mark.compat]

REF = DATA / "svd" / "ref_denoise.safetensors"
TOL = 1e-5
MERGED = {0: ("mid", "in11"), 1: (None, "in10"), 2: (None, "in09")}  # output block -> (h, hsp) merger names


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def sp():
    import_comfy()
    return import_pack("comfy_bridge.svd_patch")


@pytest.fixture(scope="module")
def ref():
    from safetensors.torch import load_file

    return load_file(str(REF))


def load_svd(path):
    from tests.support.comfy_test_nodes.tiny_svd import load_svd_model

    return load_svd_model(path)


@pytest.fixture(scope="module")
def svd(sp, svd_tiny_checkpoint):
    """(SVD MODEL, CAM patcher, merger patcher) of the tiny checkpoint, read once."""
    pack = import_pack("streamingt2v_core.svd.weights")
    model = load_svd(svd_tiny_checkpoint)
    parts = pack.read_cam_and_mergers(svd_tiny_checkpoint)  # memory-mapped views of the file
    return model, sp.build_cam(model, parts), sp.build_mergers(model, parts), parts


@pytest.fixture(scope="module")
def patched(sp, svd, ref):
    model, cam, mergers, _ = svd
    return sp.streaming_svd_patch(model, cam, mergers, ref["in/ctrl_frames"])


def unet_options(model, cond_or_uncond) -> dict:
    """transformer_options as the sampler builds them for one apply_model call."""
    import comfy.sampler_helpers

    options = copy.deepcopy(model.model_options)
    comfy.sampler_helpers.prepare_model_patcher(model, {}, options)
    to = options["transformer_options"]
    to["cond_or_uncond"] = list(cond_or_uncond)
    return to


def denoise(model, ref, order=slice(None), cond_or_uncond=(1, 0), options=None):
    """The patched model's denoised output for the recorded inputs (rows in `order`)."""
    to = unet_options(model, cond_or_uncond) if options is None else options
    with torch.no_grad():
        return model.model.apply_model(ref["in/x"][order], ref["in/sigma"][order],
                                       c_concat=ref["in/c/concat"][order], c_crossattn=ref["in/c/crossattn"][order],
                                       y=ref["in/c/vector"][order], num_video_frames=25, transformer_options=to)


def recorded(sp, model, ref):
    """One call with probes: a DIFFUSION_MODEL wrapper inside ours (sees the CAM features and the UNet
    output) and output-block patches around ours (see the merger inputs and outputs)."""
    import comfy.patcher_extension as pe

    seen = {}

    def inner(executor, *args, **kwargs):
        seen["features"] = args[5][sp.FEATURES_KEY]
        seen["unet_out"] = out = executor(*args, **kwargs)
        return out

    def probe(tag):  # records the merged skip (and, at block 0, the mid output) before/after the mergers
        def patch(h, hsp, to):
            i = to["block"][1]
            if i in MERGED:
                seen[f"{MERGED[i][1]}/{tag}"] = hsp.clone()
                if MERGED[i][0]:
                    seen[f"{MERGED[i][0]}/{tag}"] = h.clone()
            return h, hsp
        return patch

    before, after = probe("skip_in"), probe("out")

    to = unet_options(model, (1, 0))
    to["wrappers"][pe.WrappersMP.DIFFUSION_MODEL].setdefault("test_probe", []).append(inner)
    to["patches"]["output_block_patch"] = [before] + to["patches"]["output_block_patch"] + [after]
    seen["denoised"] = denoise(model, ref, options=to)
    return seen


@pytest.fixture(scope="module")
def probed(sp, patched, ref):
    return recorded(sp, patched, ref)


def test_the_checkpoint_is_comfyuis_svd_and_the_cam_is_a_unet_without_output_path(sp, svd):
    model, cam, _, _ = svd
    assert type(model.model).__name__ == "SVD_img2vid"
    unet = cam.model.unet
    assert type(unet).__name__ == "UNetModel" and len(unet.output_blocks) == 0
    assert len(unet.input_blocks) == 12
    assert all(not t.is_meta for t in cam.model.state_dict().values())


def test_a_cam_that_does_not_fit_the_unet_is_refused(sp, svd):
    import dataclasses

    model, _, _, parts = svd
    dropped = dict(parts.cam_unet)
    dropped.pop("time_embed.0.weight")
    with pytest.raises(ValueError, match="1 missing keys"):
        sp.build_cam(model, dataclasses.replace(parts, cam_unet=dropped))
    extra = dict(parts.cam_unet, **{"output_blocks.99.weight": parts.cam_unet["time_embed.0.bias"]})
    with pytest.raises(ValueError, match="1 unexpected"):
        sp.build_cam(model, dataclasses.replace(parts, cam_unet=extra))


def test_wrong_control_frames_and_partial_videos_are_refused(sp, svd, patched, ref):
    model, cam, mergers, _ = svd
    with pytest.raises(ValueError, match="control_frames"):
        sp.streaming_svd_patch(model, cam, mergers, ref["in/ctrl_frames"][:, :6])
    with pytest.raises(ValueError, match="whole videos"):  # before any UNet work: 20 rows of 25-frame videos
        denoise(patched, ref, order=slice(0, 20), cond_or_uncond=(1,))


def test_cam_features_match_the_official_cam(sp, patched, probed, ref):
    import comfy.patcher_extension as pe

    hooks = patched.get_wrappers(pe.WrappersMP.DIFFUSION_MODEL, sp.WRAPPER_KEY)[0].__self__
    enc = hooks._encoding[2]
    assert rel(enc.repeat(2, 1, 1, 1), ref["int/cam_cond_embedding"]) <= TOL
    feats = probed["features"]
    errors = {f"{i:02d}": rel(f, ref[f"int/cam_down_res/{i:02d}"]) for i, f in enumerate(feats["skips"])}
    errors["mid"] = rel(feats["mid"], ref["int/cam_mid_res"])
    assert len(feats["skips"]) == 12 and max(errors.values()) <= TOL, errors


def test_mergers_match_the_official_mergers(probed, ref):
    errors = {}
    for name in ("in09", "in10", "in11", "mid"):
        for what in ("skip_in", "out"):
            errors[f"{name}/{what}"] = rel(probed[f"{name}/{what}"], ref[f"int/merger/{name}/{what}"])
    assert max(errors.values()) <= TOL, errors


def test_unet_output_and_denoised_match_the_official_denoiser(probed, ref):
    assert rel(probed["unet_out"], ref["out/unet_out"]) <= TOL
    assert rel(probed["denoised"], ref["out/denoised_cfg_batch"]) <= TOL
    # not vacuous: the mergers move the skips and the middle-block output
    for name in ("in09", "in10", "in11", "mid"):
        assert rel(probed[f"{name}/out"], probed[f"{name}/skip_in"]) > 0.01, name


def test_cond_and_uncond_in_either_order(patched, probed, ref):
    swapped = torch.cat([torch.arange(25, 50), torch.arange(25)])
    out = denoise(patched, ref, order=swapped, cond_or_uncond=(0, 1))
    assert rel(out, ref["out/denoised_cfg_batch"][swapped]) <= TOL
    assert rel(out, probed["denoised"][swapped]) <= TOL  # the same up to fp32 summation order


COND = slice(25, 50)


@pytest.fixture(scope="module")
def one_video(sp, patched, ref):
    """The cond video alone (cfg 1, or a batch ComfyUI split), through a clone of the patched MODEL."""
    twin = patched.clone()
    return twin, denoise(twin, ref, order=COND, cond_or_uncond=(0,))


def test_one_video_through_a_clone(sp, patched, one_video, ref):
    twin, out = one_video
    assert [m.model for m in twin.get_additional_models_with_key(sp.MODELS_KEY)] == \
           [m.model for m in patched.get_additional_models_with_key(sp.MODELS_KEY)]
    assert rel(out, ref["out/denoised_cfg_batch"][COND]) <= TOL


def test_patching_a_patched_model_replaces_the_patch(sp, svd, patched, ref):
    import comfy.patcher_extension as pe

    _, cam, mergers, _ = svd
    other = ref["in/ctrl_frames"].flip(1)
    again = sp.streaming_svd_patch(patched, cam, mergers, other)
    wrappers = again.get_wrappers(pe.WrappersMP.DIFFUSION_MODEL, sp.WRAPPER_KEY)
    (patch,) = again.model_options["transformer_options"]["patches"]["output_block_patch"]
    assert len(wrappers) == 1 and wrappers[0].__self__ is patch.__self__
    assert torch.equal(patch.__self__.control_frames, other[0])
    # the original keeps its own patch
    assert torch.equal(patched.model_options["transformer_options"]["patches"]["output_block_patch"][0]
                       .__self__.control_frames, ref["in/ctrl_frames"][0])


def test_partial_lowvram_loading_repeats_the_result_exactly(sp, patched, one_video, ref):
    """ComfyUI's lowvram partial load (here on the load device with a 1 MiB budget: every comfy.ops layer of
    the UNet and the CAM casts its weight per call; the pure-torch encoder and mergers come for the call),
    a second call of the same input: the same result."""
    models = [patched] + patched.get_nested_additional_models()
    try:
        for m in models:
            m.patch_model(device_to=m.load_device, lowvram_model_memory=1 << 20, load_weights=True)
        assert any(getattr(mod, "comfy_cast_weights", False) for mod in patched.model.modules())
        assert any(getattr(mod, "comfy_cast_weights", False) for mod in models[1].model.modules())
        out = denoise(patched, ref, order=COND, cond_or_uncond=(0,))
    finally:
        for m in models:
            m.unpatch_model(device_to=m.offload_device)
    assert torch.equal(out, one_video[1])
