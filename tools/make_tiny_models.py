"""Write tiny random-weight models laid out like a ComfyUI models folder.

    python tools/make_tiny_models.py OUT_DIR

OUT_DIR/streamingt2v/tiny_streamingt2v.safetensors (+ .json)
    the tiny StreamingT2V checkpoint of the oracle (tests/data/oracle), official key names, rebuilt
    bit-exactly from its manifest by the oracle's weight rule; the sidecar is the oracle's tiny config.
OUT_DIR/diffusion_models/tiny_modelscope_t2v.safetensors (+ .json)
    a tiny ModelScope text-to-video UNet (diffusers UNet3DConditionModel, the oracle's tiny UNet
    config), weights drawn by the same rule from its own seed.
OUT_DIR/streamingt2v_refiner/tiny_ms_vid2vid/
    the tiny refiner, when tools/make_tiny_refiner.py exists (one folder per refiner, as the loader lists them).
OUT_DIR/diffusion_models/tiny_wan21_t2v.safetensors, OUT_DIR/vae/tiny_wan_vae.safetensors
    a tiny Wan 2.1 t2v DiT and Wan 2.1 VAE that core ComfyUI's UNETLoader/VAELoader load, when
    tools/make_tiny_wan.py exists (its docstring gives the layouts).

The frames these models make are noise: they only prove the pipeline.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import torch
from safetensors.torch import save_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORACLE = os.path.join(REPO, "tests", "data", "oracle")
MANIFEST = os.path.join(ORACLE, "tiny_manifest.tsv")
CONFIG = os.path.join(ORACLE, "tiny_config.json")
UNET_CONFIG_KEY = "unet_config (hub unet/config.json; used for base_model and, via from_unet, the ControlNet)"

MODELSCOPE_SEED = 20240602  # the StreamingT2V checkpoint keeps the oracle's seed (streamingt2v_core.tiny)

STREAMINGT2V_NAME = "tiny_streamingt2v"
MODELSCOPE_NAME = "tiny_modelscope_t2v"
REFINER_NAME = "tiny_ms_vid2vid"

sys.path.insert(0, REPO)
from tests.support.tiny import read_manifest, regenerate  # noqa: E402  (the oracle's weight rule)


def tiny_unet_config():
    with open(CONFIG) as f:
        cfg = json.load(f)[UNET_CONFIG_KEY]
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def write_streamingt2v(out_dir):
    folder = os.path.join(out_dir, "streamingt2v")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, STREAMINGT2V_NAME + ".safetensors")
    save_file(regenerate(read_manifest(MANIFEST)), path)
    shutil.copyfile(CONFIG, os.path.join(folder, STREAMINGT2V_NAME + ".json"))
    return path


def write_modelscope_unet(out_dir):
    from diffusers import UNet3DConditionModel

    cfg = tiny_unet_config()
    with torch.device("meta"):
        unet = UNet3DConditionModel(**cfg)
    rows = [(k, list(v.shape), "float32") for k, v in unet.state_dict().items()]
    folder = os.path.join(out_dir, "diffusion_models")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, MODELSCOPE_NAME + ".safetensors")
    save_file(regenerate(rows, seed=MODELSCOPE_SEED), path)
    with open(os.path.join(folder, MODELSCOPE_NAME + ".json"), "w") as f:
        json.dump({"_class_name": "UNet3DConditionModel", **cfg}, f, indent=1)
    return path


def write_refiner(out_dir):
    script = os.path.join(REPO, "tools", "make_tiny_refiner.py")
    if not os.path.exists(script):
        return None
    folder = os.path.join(out_dir, "streamingt2v_refiner", REFINER_NAME)
    subprocess.run([sys.executable, script, folder], check=True)
    return folder


def write_wan(out_dir):
    script = os.path.join(REPO, "tools", "make_tiny_wan.py")
    if not os.path.exists(script):
        return None
    subprocess.run([sys.executable, script, out_dir], check=True)  # prints the two files it writes
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="a models folder (it gets streamingt2v/, diffusion_models/, ...)")
    out_dir = p.parse_args(argv).out_dir
    for path in (write_streamingt2v(out_dir), write_modelscope_unet(out_dir), write_refiner(out_dir),
                 write_wan(out_dir)):
        if path is not None:
            print(path)


if __name__ == "__main__":
    main()
