"""The refiner's recorded oracle (tests/data/refiner/oracle_slices.safetensors) and the tiny MS-Vid2Vid
refiner rebuilt from its manifests (tools/make_tiny_refiner.py)."""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from tests.support.paths import REFINER_DATA
from tools import make_tiny_refiner

_OFFICIAL_FOLDERS: dict = {}  # the official-layout files, written and checked once per session


def oracle_slices() -> dict:
    from safetensors import safe_open

    with safe_open(str(REFINER_DATA / "oracle_slices.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def tiny_official(folder: Path):
    """The tiny refiner in the official ModelScope layout (.pth / .bin / .ckpt), rebuilt from the manifests
    (each tensor checked against the manifest sha256), loaded."""
    from streamingt2v_core.enhancers.load import load_refiner

    if "files" not in _OFFICIAL_FOLDERS:
        build = Path(tempfile.mkdtemp(prefix="tiny_v2v_"))
        atexit.register(shutil.rmtree, build, ignore_errors=True)
        _OFFICIAL_FOLDERS["files"] = make_tiny_refiner.write(build, "official", check=True)
    shutil.copytree(_OFFICIAL_FOLDERS["files"], folder, dirs_exist_ok=True)
    return load_refiner(folder)
