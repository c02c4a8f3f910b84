"""One denoiser call of the tiny official-layout model against the tensors the official code recorded
(tests/data/oracle/ref_io.safetensors)."""
import torch

TOL = 1e-4


def maxabs(a, b):
    return (a.float() - b.float()).abs().max().item()


def test_tokenizer_ids(tiny_model, ref_io):
    assert torch.equal(tiny_model.tokenize(["a tiny oracle prompt"]), ref_io["in/prompt_input_ids"])
    assert torch.equal(tiny_model.tokenize([""]), ref_io["in/uncond_input_ids"])


def test_encode_text(tiny_model, ref_io):
    ids = torch.cat([ref_io["in/uncond_input_ids"], ref_io["in/prompt_input_ids"]])
    assert maxabs(tiny_model.encode_text(ids), ref_io["in/text_embeds"]) <= TOL


def test_encode_anchor_and_uncond_tokens(tiny_model, ref_io):
    anchor = ref_io["in/anchor_image"]
    pre = tiny_model.image_encoder.preprocess(anchor)
    assert maxabs(pre, ref_io["int/image_encoder_preprocessed"]) <= 1e-5
    assert maxabs(tiny_model.image_encoder(anchor), ref_io["int/image_embedding"]) <= TOL
    tokens = tiny_model.encode_anchor(torch.cat([torch.zeros_like(anchor), anchor]))
    assert tokens.shape == (2, 16, 1024)
    assert maxabs(tokens, ref_io["in/image_tokens"]) <= TOL


def _inputs(ref):
    cond = ref["in/cond_frames"]
    return ref["in/sample"], ref["in/timestep"][0], ref["in/encoder_hidden_states"], cond.expand(2, *cond.shape[1:])


def test_cam_residuals(tiny_model, ref_io):
    sample, t, ehs, cond = _inputs(ref_io)
    assert torch.equal(cond.reshape(-1, *cond.shape[2:]), ref_io["in/controlnet_cond"])
    skips, mid = tiny_model.cam(sample, t, ehs[:, :77], cond)
    assert len(skips) == 12
    for i, s in enumerate(skips):
        ref = ref_io[f"int/controlnet_down_res/{i:02d}"]
        assert s.shape == ref.shape
        assert maxabs(s, ref) <= TOL, f"CAM skip {i}"
    assert maxabs(mid, ref_io["int/controlnet_mid_res"]) <= TOL


def test_predict_noise_and_guidance(tiny_model, ref_io):
    sample, t, ehs, cond = _inputs(ref_io)
    eps = tiny_model.predict_noise(sample, t, ehs, cond)
    ref = ref_io["out/noise_pred"]
    assert maxabs(eps, ref) <= TOL
    rel = ((eps - ref).norm() / ref.norm()).item()
    assert rel <= 1e-5
    u, c = eps.chunk(2)
    assert maxabs(u + 7.5 * (c - u), ref_io["out/noise_pred_cfg"]) <= 1e-3


def test_apm_mixing_is_active(tiny_model, ref_io):
    """A different anchor must change the prediction (the APM tokens reach every cross-attention)."""
    sample, t, ehs, cond = _inputs(ref_io)
    other = ehs.clone()
    other[:, 77:] = 0
    a = tiny_model.predict_noise(sample[1:], t, ehs[1:], cond[1:])
    b = tiny_model.predict_noise(sample[1:], t, other[1:], cond[1:])
    assert maxabs(a, b) > 1e-3


def test_cond_frame_features_given_once_equal_the_official_call(tiny_model, ref_io):
    """The CAM's frame features computed once (what generate_chunk passes every step) give the oracle's
    prediction, and for both guidance rows from the features of one row."""
    sample, t, ehs, cond = _inputs(ref_io)
    emb = tiny_model.encode_cond_frames(cond[:1]).repeat(2, 1, 1, 1)
    eps = tiny_model.predict_noise(sample, t, ehs, None, emb)
    assert maxabs(eps, tiny_model.predict_noise(sample, t, ehs, cond)) <= 1e-6
    assert maxabs(eps, ref_io["out/noise_pred"]) <= TOL
