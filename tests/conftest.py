"""Shared fixtures: the oracle's tiny StreamingT2V checkpoint, rebuilt from its manifest once per machine."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.paths import CACHE, ORACLE

TINY_HASH = "d5e57138bf5c45af237b6a115c28875cc9646a9b69ee738d5ccfb9111ded6e5b"


def tiny_checkpoint_path() -> Path:
    """The tiny oracle checkpoint as a flat official-key safetensors file (+ its config beside it)."""
    import shutil

    from safetensors.torch import save_file

    from tests.support import tiny

    path = CACHE / "tiny_streamingt2v.safetensors"
    stamp = CACHE / "tiny_streamingt2v.sha256"
    if not (path.exists() and stamp.exists() and stamp.read_text() == TINY_HASH):
        CACHE.mkdir(parents=True, exist_ok=True)
        state = tiny.regenerate(tiny.read_manifest(ORACLE / "tiny_manifest.tsv"))
        digest = tiny.content_hash(state)
        assert digest == TINY_HASH, f"tiny weights differ from the oracle's: {digest}"
        save_file(state, str(path) + ".tmp")
        os.replace(str(path) + ".tmp", path)
        stamp.write_text(digest)
    shutil.copyfile(ORACLE / "tiny_config.json", CACHE / "tiny_streamingt2v.json")
    return path


@pytest.fixture(scope="session")
def tiny_ckpt() -> Path:
    return tiny_checkpoint_path()


@pytest.fixture(scope="session")
def tiny_config() -> Path:
    return ORACLE / "tiny_config.json"


# The real-ComfyUI fixtures (comfy_server, comfy, tiny_models_dir), shared by tests/comfy and tests/browser,
# and the browser fixtures (browser, frontend).
pytest_plugins = ["tests.support.server_fixtures", "tests.support.browser_fixtures"]


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt):
    """The tiny oracle model in fp32 on CPU (shared: tests must not modify it)."""
    import streamingt2v_core as st

    return st.load_streamingt2v(str(tiny_ckpt))


@pytest.fixture(scope="session")
def ref_io():
    from safetensors.torch import load_file

    return load_file(str(ORACLE / "ref_io.safetensors"))


@pytest.fixture(scope="session")
def ref_long():
    from safetensors.torch import load_file

    return load_file(str(ORACLE / "ref_long.safetensors"))
