"""Pytest plugin (registered in tests/conftest.py as tests.support.server_fixtures): one real ComfyUI server per test session, headless on
127.0.0.1, with this pack linked into a temp custom_nodes/ folder and tiny random-weight models in a temp
models folder (recipe: ../shared/reference/comfyui_ci_recipe.md). Shared by tests/comfy and tests/browser."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.comfy_client import (REPO_ROOT, ComfyClient, ComfyServer, ServerError, default_comfy_dir,
                          tiny_models_key, write_extra_model_paths)

MAKE_TINY = REPO_ROOT / "tools" / "make_tiny_models.py"
# Test-only nodes (tests/support/comfy_test_nodes: a tiny Wan text conditioning), linked next to the pack.
TEST_NODES = {"streamingt2v_test_nodes": REPO_ROOT / "tests" / "support" / "comfy_test_nodes"}
_server_log: list[Path] = []


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def make_tiny_models(out_dir: Path) -> None:
    """tools/make_tiny_models.py OUT_DIR writes one sub-folder per ComfyUI model folder key.

    Outside CI the result is kept in .cache/tiny_models/<content hash> and copied (never linked: tests may
    add broken files next to them) into out_dir, so a test session does not rebuild it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if not MAKE_TINY.is_file():
        if in_ci():
            pytest.fail(f"{MAKE_TINY} is missing: the real-server tests need its tiny models")
        return
    cache_root = Path(os.environ.get("STREAMINGT2V_TEST_CACHE", REPO_ROOT / ".cache")) / "tiny_models"
    cached = cache_root / tiny_models_key()
    if not in_ci() and (cached / ".complete").is_file():
        shutil.copytree(cached, out_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".complete"))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(MAKE_TINY), str(out_dir)], cwd=str(REPO_ROOT), env=env,
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.fail(f"tools/make_tiny_models.py failed (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    if not in_ci():
        cache_root.mkdir(parents=True, exist_ok=True)
        # Sets are hundreds of MB: drop stale ones (not ones another session may be copying right now).
        for old in cache_root.iterdir():
            if old != cached and time.time() - old.stat().st_mtime > 1800:
                shutil.rmtree(old, ignore_errors=True)
        tmp = cache_root / f".tmp{os.getpid()}"
        shutil.copytree(out_dir, tmp)
        (tmp / ".complete").write_text("")
        try:
            os.replace(tmp, cached)
        except OSError:  # another session stored the same set first
            shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("models_tiny")
    make_tiny_models(d)
    # registered with the server (empty): StreamingSVD tests link the 2 GB tiny checkpoint in when they run
    (d / "checkpoints").mkdir(exist_ok=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)  # hundreds of MB; pytest keeps its last temp dirs


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory, tiny_models_dir):
    comfy_dir = default_comfy_dir()
    if not (comfy_dir / "main.py").is_file():
        msg = f"no ComfyUI at {comfy_dir}: run `bash tools/bootstrap.sh` (or set COMFYUI_PATH)"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    base = tmp_path_factory.mktemp("comfy_base")
    yaml_path = base / "extra_model_paths.yaml"
    write_extra_model_paths(yaml_path, tiny_models_dir)
    server = ComfyServer(base, comfy_dir=comfy_dir, extra_model_paths=yaml_path, extra_packs=TEST_NODES)
    _server_log.append(server.log_path)
    try:
        server.start()
    except ServerError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield server
    finally:
        server.stop()
        keep = REPO_ROOT / "out"
        keep.mkdir(exist_ok=True)
        shutil.copy(server.log_path, keep / "comfyui_server.log")


@pytest.fixture(scope="session")
def comfy(comfy_server) -> ComfyClient:
    """An HTTP/websocket client bound to the session's server."""
    return ComfyClient(comfy_server.url)


@pytest.fixture
def server_alive(comfy_server, comfy):
    """Use in tests that abuse the server: after the test, the server still answers."""
    yield comfy_server
    assert comfy_server.alive(), "ComfyUI died during the test\n" + comfy_server.log_tail()
    comfy.system_stats()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _server_log or not (terminalreporter.stats.get("failed") or terminalreporter.stats.get("error")):
        return
    log = _server_log[-1]
    kept = REPO_ROOT / "out" / "comfyui_server.log"
    terminalreporter.section("ComfyUI server log (tail)")
    src = kept if kept.exists() else log
    try:
        lines = src.read_text(errors="replace").splitlines()[-150:]
    except FileNotFoundError:
        lines = ["(no log)"]
    terminalreporter.write_line(f"full log: {src}")
    for ln in lines:
        terminalreporter.write_line(ln)


def pytest_collection_modifyitems(config, items):
    """Mark tests by folder, so `-m "not browser"` or `-m comfy` select them."""
    for item in items:
        try:
            top = Path(str(item.fspath)).resolve().relative_to(REPO_ROOT / "tests").parts[0]
        except ValueError:
            continue
        if top in ("browser", "comfy"):
            item.add_marker(getattr(pytest.mark, top))
