"""Shared fixtures: the oracle's tiny StreamingT2V checkpoint, rebuilt from its manifest once per machine."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.paths import ORACLE
from tests.support.tiny import tiny_checkpoint_path

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


@pytest.fixture(scope="session")
def oracle():
    """The refiner's recorded oracle tensors (tests/data/refiner/oracle_slices.safetensors)."""
    from tests.support.refiner import oracle_slices

    return oracle_slices()


@pytest.fixture(scope="session")
def tiny_official(tmp_path_factory):
    """The tiny MS-Vid2Vid refiner in the official layout (.pth / .bin / .ckpt), rebuilt from the manifests
    and loaded once (tests only read it)."""
    from tests.support.refiner import tiny_official as load_tiny_official

    return load_tiny_official(tmp_path_factory.mktemp("tiny_v2v"))


@pytest.fixture(scope="session")
def svd_tiny_checkpoint() -> Path:
    """The StreamingSVD oracle's tiny model.safetensors (2 GB), rebuilt once into the cache and hash-checked."""
    from tests.support.svd_tiny import tiny_svd_checkpoint

    return tiny_svd_checkpoint()
