"""How oracle_slices.safetensors was cut from the shared oracle (../shared/oracle/refiner); not run by the tests.

usage: python tests/data/refiner/slice_oracle.py /work/shared/oracle/refiner
"""
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

VAE_FRAMES = 3  # frames of the end-to-end forward kept for the text/VAE checks

src = Path(sys.argv[1])
out = {}
with safe_open(str(src / "ref_denoise.safetensors"), "pt") as f:
    for k in f.keys():
        if "/dbg_pos/" not in k and k.split("/")[-1] in ("xt", "t", "y_out", "u_out", "out_guided", "x0", "y", "y_neg"):
            out[f"denoise/{k}"] = f.get_tensor(k)
with safe_open(str(src / "ref_blend_sample.safetensors"), "pt") as f:
    for k in f.keys():
        keep_chunk = k.startswith(("step00/", "step12/", "step13/")) and k.endswith("/x0") and "/chunk" in k
        if keep_chunk or k in ("in/noised", "solver/sigmas", "out/latents") or k.split("/")[-1] in (
                "offsets", "bt_noise", "x0_blended", "t"):
            out[f"blend/{k}"] = f.get_tensor(k)
with safe_open(str(src / "ref_v2v_forward.safetensors"), "pt") as f:
    for k in ("text/tokens_pos", "text/tokens_neg", "text/y", "text/negative_y"):
        out[f"forward/{k}"] = f.get_tensor(k)
    out["forward/in/frames_uint8"] = f.get_tensor("in/frames_uint8")[:VAE_FRAMES]
    for k in ("vae/enc_mean", "vae/enc_std", "vae/enc_eps", "vae/dec_in"):
        out[f"forward/{k}"] = f.get_tensor(k)[:VAE_FRAMES].contiguous()
    out["forward/out/video"] = f.get_tensor("out/video")[:, :, :VAE_FRAMES].contiguous()
save_file(out, str(Path(__file__).with_name("oracle_slices.safetensors")))
