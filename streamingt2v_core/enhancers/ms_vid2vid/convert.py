"""Conversion: the official MS-Vid2Vid-XL files -> a folder of safetensors (only the tensors the refiner uses);
`python -m streamingt2v_core.refiner SRC DST`."""
from __future__ import annotations

from pathlib import Path

from ...common.dtypes import DTYPES
from ...common.weights import CheckpointError
from .files import CONFIG_FILES, CONVERTED_FILES, OFFICIAL_FILES, SOURCES_FIX, find_file, read_weights
from .text import OpenCLIPTextEncoder
from .unet import infer_unet_config


def convert_official_folder(src, dst, dtype: str = "fp16") -> Path:
    """Write unet/text_encoder/vae.safetensors from the official folder: official key names, the text tower
    without the vision tower, the autoencoder without the rest of the SD checkpoint.
    The UNet is stored in `dtype` (the official run casts it to fp16); text encoder and VAE stay fp32."""
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    files = {name: find_file(src, OFFICIAL_FILES[name]) for name in OFFICIAL_FILES}
    missing = [OFFICIAL_FILES[n] for n, f in files.items() if f is None]
    if missing:
        raise CheckpointError(f"{src}: missing {', '.join(missing)}; {SOURCES_FIX}")
    unet_dtype = DTYPES[dtype]
    dst.mkdir(parents=True, exist_ok=True)
    unet = read_weights(files["unet"])
    infer_unet_config(unet)  # refuse anything that is not a Vid2Vid UNet before writing
    save_file({k: v.to(unet_dtype).contiguous() for k, v in unet.items()}, str(dst / CONVERTED_FILES["unet"]))
    del unet
    text = read_weights(files["text_encoder"])
    text = {k[len("module."):] if k.startswith("module.") else k: v for k, v in text.items()}
    # the text tower only (the vision tower is deleted officially); the last block stays so the depth,
    # and hence which layer is the penultimate, can still be read from the keys
    keep = [k for k in text if k.startswith(("token_embedding.", "positional_embedding", "transformer.", "ln_final."))]
    OpenCLIPTextEncoder.from_state_dict({k: text[k] for k in keep})  # refuse an incomplete tower before writing
    save_file({k: text[k].float().contiguous() for k in keep}, str(dst / CONVERTED_FILES["text_encoder"]))
    del text
    vae = read_weights(files["autoencoder"])
    save_file({k: v.float().contiguous() for k, v in vae.items() if k.startswith("first_stage_model.")},
              str(dst / CONVERTED_FILES["autoencoder"]))
    for name in CONFIG_FILES:  # the size config travels with the weights
        if (src / name).is_file():
            (dst / name).write_text((src / name).read_text())
    return dst


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m streamingt2v_core.refiner",
                                 description="Convert the official MS-Vid2Vid-XL folder to safetensors.")
    ap.add_argument("src", help="folder with non_ema_0035000.pth, open_clip_pytorch_model.bin, v2-1_512-ema-pruned.ckpt")
    ap.add_argument("dst", help="output folder (e.g. ComfyUI/models/streamingt2v_refiner/ms_vid2vid_xl)")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="fp16", help="UNet storage dtype")
    args = ap.parse_args(argv)
    print(convert_official_folder(args.src, args.dst, args.dtype))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
