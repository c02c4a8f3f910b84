"""ComfyUI imported into the test process (no server), for tests of the pack's ComfyUI-aware layer against
core's own classes: the checkout is tests.support.comfy_client.default_comfy_dir() ($COMFYUI_PATH on the
0.33.0 leg), and the pack is imported as a stand-in package so its relative imports resolve (the pack's own
__init__ needs a running ComfyUI's folder setup)."""
from __future__ import annotations

import importlib
import sys
import types

import pytest
import torch

from tests.support.comfy_client import REPO_ROOT, default_comfy_dir

PACK = "st2v_inproc_pack"


def import_comfy(missing=pytest.skip):
    """Put the ComfyUI checkout on sys.path and return its version string. Without a checkout, calls
    `missing(message)`: a test skips; a script (bench/) passes its own (e.g. SystemExit)."""
    root = default_comfy_dir()
    if not (root / "comfy" / "context_windows.py").is_file():
        missing(f"no ComfyUI checkout at {root} (tools/bootstrap.sh)")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.cli_args

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True  # what `main.py --cpu` sets; model_management reads it on import
    import comfyui_version

    return comfyui_version.__version__


def import_pack(module: str, missing=pytest.skip):
    """A pack module (e.g. "comfy_bridge.context_fuse") imported in-process with ComfyUI available."""
    import_comfy(missing)
    if PACK not in sys.modules:
        pack = types.ModuleType(PACK)
        pack.__path__ = [str(REPO_ROOT)]
        sys.modules[PACK] = pack
    return importlib.import_module(f"{PACK}.{module}")
