"""`python -m streamingt2v_core.refiner`: the official folder -> safetensors."""
import torch

from streamingt2v_core.enhancers.load import load_refiner
from tools import make_tiny_refiner


def test_converter_keeps_only_used_tensors(tmp_path, tiny_official, oracle):
    from safetensors import safe_open as open_st

    from streamingt2v_core.enhancers.ms_vid2vid.convert import convert_official_folder

    src = make_tiny_refiner.write(tmp_path / "official", "official")
    dst = convert_official_folder(src, tmp_path / "converted", dtype="fp32")
    with open_st(str(dst / "text_encoder.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "transformer.resblocks.1.ln_1.weight" in keys  # the depth stays readable from the keys
    assert not any(k.startswith(("visual.", "text_projection", "logit_scale")) for k in keys)
    conv = load_refiner(dst)
    xt, t = oracle["denoise/callB/in/xt"][:, :, :8], oracle["denoise/callB/in/t"]
    y, y_neg = oracle["denoise/ctx/y"], oracle["denoise/ctx/y_neg"]
    torch.testing.assert_close(conv.predict_x0(xt, t, y, y_neg), tiny_official.predict_x0(xt, t, y, y_neg))
    torch.testing.assert_close(conv.encode_prompt("a cat")[0], tiny_official.encode_prompt("a cat")[0])
