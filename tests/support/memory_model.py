"""The tiny oracle StreamingT2V model and one input of each of its parts, for the memory tests (offload,
chunking, plan, and the bench-only tricks): every option must keep these outputs."""
from __future__ import annotations

import torch

import streamingt2v_core as st
from tests.support import tiny
from tests.support.paths import ORACLE

# No second device on a CPU machine: "cpu:0" compares unequal to "cpu", so every move is a real .to() call
# with a distinguishable target; the CUDA tests check real placement where a GPU exists.
COMPUTE = torch.device("cpu", 0)
# StreamingT2V's parts used once per prompt, per stream or per chunk (what its low-memory plan offloads).
T2V_PARTS = ("text_encoder", "image_encoder", "resampler", "vae")


def load_model():
    state = tiny.regenerate(tiny.read_manifest(str(ORACLE / "tiny_manifest.tsv")))
    return st.load_streamingt2v(state, config=str(ORACLE / "tiny_config.json"))


def model_inputs(model):
    cfg = model.config
    g = torch.Generator().manual_seed(5)
    sample = torch.randn(1, 4, cfg.chunk_frames, cfg.height // 8, cfg.width // 8, generator=g)
    ehs = torch.randn(1, cfg.text_tokens + cfg.apm_tokens, cfg.context_dim, generator=g)
    cond = torch.rand(1, cfg.cond_frames, 3, cfg.height, cfg.width, generator=g) * 2 - 1
    anchor = torch.rand(1, 3, cfg.height, cfg.width, generator=g) * 2 - 1
    return sample, torch.tensor(501), ehs, cond, anchor


def run_all(model, inputs):
    sample, t, ehs, cond, anchor = inputs
    return {
        "text": model.encode_prompt(["", "a red fox"]),
        "apm": model.encode_anchor(anchor),
        "eps": model.predict_noise(sample, t, ehs, cond),
        "frames": model.decode_latents(sample[:, :, :4]),
    }


def assert_same(a: dict, b: dict, tol=1e-6):
    for k in a:
        err = (a[k].float() - b[k].float()).abs().max().item()
        scale = a[k].float().abs().max().item()
        assert err <= tol * max(scale, 1.0), f"{k}: max abs diff {err} (scale {scale})"
