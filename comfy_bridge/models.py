"""The pack's model folders in ComfyUI: registration, what each loader offers, and name and path checks.

models/streamingt2v holds StreamingT2V checkpoints (a file, or a folder converted with
`python -m streamingt2v_core.convert`), models/streamingt2v_refiner one folder per refiner, and the
ModelScope text-to-video UNet comes from ComfyUI's own models/diffusion_models. StreamingSVD's CAM is read
from its model.safetensors in ComfyUI's models/checkpoints or from a CAM-only file in models/streamingsvd.
"""
from __future__ import annotations

import os

import folder_paths

STREAMINGT2V = "streamingt2v"
REFINER = "streamingt2v_refiner"
MODELSCOPE = "diffusion_models"
STREAMINGSVD = "streamingsvd"  # CAM-only files; the full model.safetensors lives in ComfyUI's checkpoints
CHECKPOINTS = "checkpoints"
# Model folder keys of the pack; `extra_model_paths.yaml` may already have added paths for them.
MODEL_FOLDERS = (STREAMINGT2V, REFINER, STREAMINGSVD)
WEIGHT_EXTENSIONS = {".ckpt", ".pt", ".pth", ".bin", ".safetensors", ".sft"}
# A folder written by `python -m streamingt2v_core.convert` holds one file per official component.
_CONVERTED_MARKERS = ("base_model.safetensors", "config.json")
# what marks a folder as one refiner: official ModelScope files, our converted files, or a diffusers T2V folder
_REFINER_MARKERS = ("non_ema_0035000.pth", "unet.safetensors", "model_index.json", "unet/config.json")


def register_model_folders() -> None:
    for key in MODEL_FOLDERS:
        path = os.path.join(folder_paths.models_dir, key)
        folder_paths.add_model_folder_path(key, path)  # appends; never replaces yaml-configured paths
        # A new key starts with an empty extension set (= every file); offer weights, not sidecar .json.
        folder_paths.folder_names_and_paths[key][1].update(folder_paths.supported_pt_extensions)
        if os.path.isdir(folder_paths.models_dir):
            os.makedirs(path, exist_ok=True)


def model_name_problem(input_name: str, name, folder: str) -> str | None:
    """Why `name` cannot be a model name in models/`folder` (None: it can). ComfyUI users symlink model
    files and folders into models/ on purpose, so a symlink inside the folder is fine; what is refused is
    a name that itself points elsewhere: absolute, a drive, a `..` component, a NUL byte."""
    if not isinstance(name, str) or not name:
        return f"{input_name}: no model name given; pick one from models/{folder}"
    parts = name.replace("\\", "/").split("/")
    if "\0" in name or name.startswith(("/", "\\")) or os.path.isabs(name) or (len(name) > 1 and name[1] == ":") \
            or ".." in parts:
        return (f"{input_name}: '{name}' points outside models/{folder} (absolute paths and '..' are not "
                f"allowed); pick a name from the list, or put the file (or a symlink to it) into models/{folder}")
    return None


def missing_message(input_name: str, name: str, key: str, choices: list) -> str:
    where = ", ".join(folder_paths.get_folder_paths(key)) or f"models/{key}"
    have = ", ".join(choices[:10]) or "none"
    return (f"{input_name}: '{name}' is not in models/{key} (searched: {where}). Put the file there "
            f"(see the README's weights table) or pick one that is there: {have}")


def _problem(input_name: str, name, folder: str, path_of, choices) -> str | None:
    problem = model_name_problem(input_name, name, folder)
    if problem is None and path_of(name) is None:
        problem = missing_message(input_name, name, folder, choices())
    return problem


def _find(input_name: str, name, folder: str, path_of, choices) -> str:
    """The path of model `name`: ValueError for a name that leaves the folder, FileNotFoundError for one
    that is not there (both name the input and the fix)."""
    problem = model_name_problem(input_name, name, folder)
    if problem:
        raise ValueError(problem)
    path = path_of(name)
    if path is None:
        raise FileNotFoundError(missing_message(input_name, name, folder, choices()))
    return path


# -- models/streamingt2v ----------------------------------------------------------------------------

def _is_converted_folder(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, m)) for m in _CONVERTED_MARKERS)


def streamingt2v_choices() -> list:
    """Checkpoint files and converted folders in every registered models/streamingt2v path. Files inside a
    converted folder and sidecar .json configs are not offered on their own."""
    folders = []
    for root in folder_paths.get_folder_paths(STREAMINGT2V):
        if os.path.isdir(root):
            folders += [d for d in sorted(os.listdir(root)) if _is_converted_folder(os.path.join(root, d))]
    files = [f for f in folder_paths.get_filename_list(STREAMINGT2V)
             if os.path.splitext(f)[1].lower() in WEIGHT_EXTENSIONS
             and f.replace("\\", "/").split("/")[0] not in folders]
    return sorted(set(files)) + sorted(set(folders))


def streamingt2v_path(name: str) -> str | None:
    """The file or converted folder `name` in models/streamingt2v (callers refuse names that leave the
    folder first, with model_name_problem)."""
    path = folder_paths.get_full_path(STREAMINGT2V, name)
    if path is not None:
        return path
    for root in folder_paths.get_folder_paths(STREAMINGT2V):
        cand = os.path.join(root, name)
        if _is_converted_folder(cand):
            return cand
    return None


def streamingt2v_problem(input_name: str, name) -> str | None:
    """Why `name` is no StreamingT2V model of models/streamingt2v (None: it is one)."""
    return _problem(input_name, name, STREAMINGT2V, streamingt2v_path, streamingt2v_choices)


def find_streamingt2v(input_name: str, name) -> str:
    return _find(input_name, name, STREAMINGT2V, streamingt2v_path, streamingt2v_choices)


# -- models/diffusion_models (the ModelScope UNet) -------------------------------------------------

def modelscope_choices() -> list:
    return [f for f in folder_paths.get_filename_list(MODELSCOPE)
            if os.path.splitext(f)[1].lower() in WEIGHT_EXTENSIONS]


def modelscope_path(name: str) -> str | None:
    return folder_paths.get_full_path(MODELSCOPE, name)


def modelscope_problem(input_name: str, name) -> str | None:
    return _problem(input_name, name, MODELSCOPE, modelscope_path, modelscope_choices)


def find_modelscope(input_name: str, name) -> str:
    return _find(input_name, name, MODELSCOPE, modelscope_path, modelscope_choices)


# -- models/streamingt2v_refiner --------------------------------------------------------------------

def _is_refiner_folder(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, m)) for m in _REFINER_MARKERS)


def _refiner_folders() -> dict:
    """Name -> path of every refiner folder in the registered models/streamingt2v_refiner paths (a UNet file
    alone cannot refine pixels: the text encoder and autoencoder live beside it). A registered path that is
    itself a refiner folder is offered under its own name."""
    found = {}
    for root in folder_paths.get_folder_paths(REFINER):
        if _is_refiner_folder(root):
            found.setdefault(os.path.basename(os.path.normpath(root)), root)
        elif os.path.isdir(root):
            for name in sorted(os.listdir(root)):
                if _is_refiner_folder(os.path.join(root, name)):
                    found.setdefault(name, os.path.join(root, name))
    return found


def refiner_choices() -> list:
    return sorted(_refiner_folders())


def refiner_path(name: str) -> str | None:
    return _refiner_folders().get(name)


def refiner_problem(input_name: str, name) -> str | None:
    """Why `name` is no refiner folder (None: it is one). Only listed folder names resolve, so a name that
    leaves the folder is never found."""
    if refiner_path(name) is None:
        return missing_message(input_name, name, REFINER, refiner_choices())
    return None


def find_refiner(input_name: str, name) -> str:
    path = refiner_path(name)
    if path is None:
        raise FileNotFoundError(missing_message(input_name, name, REFINER, refiner_choices()))
    return path


# -- StreamingSVD: models/streamingsvd (CAM files) and models/checkpoints (model.safetensors) ---------

_SAFETENSORS = (".safetensors", ".sft")


def streamingsvd_choices() -> list:
    return sorted({f for key in (STREAMINGSVD, CHECKPOINTS) for f in folder_paths.get_filename_list(key)
                   if os.path.splitext(f)[1].lower() in _SAFETENSORS})


def streamingsvd_path(name: str) -> str | None:
    if os.path.splitext(name)[1].lower() not in _SAFETENSORS:
        return None
    return folder_paths.get_full_path(STREAMINGSVD, name) or folder_paths.get_full_path(CHECKPOINTS, name)


def streamingsvd_problem(input_name: str, name) -> str | None:
    """Why `name` is no safetensors file of models/streamingsvd or models/checkpoints (None: it is one)."""
    problem = model_name_problem(input_name, name, STREAMINGSVD)
    if problem is None and streamingsvd_path(name) is None:
        problem = missing_message(input_name, name, STREAMINGSVD, streamingsvd_choices()) + \
            " (or the StreamingSVD model.safetensors into models/checkpoints)"
    return problem


def find_streamingsvd(input_name: str, name) -> str:
    problem = streamingsvd_problem(input_name, name)
    if problem:
        raise ValueError(problem)
    return streamingsvd_path(name)
