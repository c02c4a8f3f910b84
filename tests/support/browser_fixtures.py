"""Pytest plugin (registered in tests/conftest.py; not a conftest.py, whose module name would clash with
tests/conftest.py): the real ComfyUI web frontend (served by the session's server) in headless Chromium,
driven by pip playwright with the system Chromium (never `playwright install`: it downloads a browser)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]

# Records what the frontend reports as missing node types each time a graph is configured.
MISSING_HOOK = """() => {
  if (window.__st2vHook) return;
  window.__st2vHook = true;
  window.__st2vMissing = null;
  window.app.registerExtension({
    name: "streamingt2v.tests.missingNodes",
    afterConfigureGraph(missing) {
      window.__st2vMissing = (missing || []).map(m => typeof m === "string" ? m : (m && m.type) || JSON.stringify(m));
    },
  });
}"""

LOAD_AND_CONVERT = """async (wf) => {
  window.__st2vMissing = null;
  await window.app.loadGraphData(wf);
  const registered = window.LiteGraph ? window.LiteGraph.registered_node_types : null;
  const unregistered = registered ? wf.nodes.map(n => n.type).filter(t => !(t in registered)) : null;
  const prompt = await window.app.graphToPrompt();
  return {missing: window.__st2vMissing, unregistered, output: prompt.output};
}"""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def chromium_executable() -> str | None:
    for cand in (os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser")):
        if cand and Path(cand).is_file():
            return cand
    return None


@pytest.fixture(scope="session")
def browser():
    exe = chromium_executable()
    if exe is None:
        msg = "Chromium is not installed (apt-get install chromium; .ci/run does) or set CHROMIUM_PATH"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if in_ci():
            raise
        pytest.skip("pip playwright is not installed (tools/requirements-dev.txt; run bash tools/bootstrap.sh)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


class FrontendPage:
    """One browser tab on the ComfyUI frontend, ready for app.loadGraphData / app.graphToPrompt."""

    def __init__(self, page):
        self.page = page
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))

    def load_workflow(self, workflow: dict) -> dict:
        """Load a UI-format workflow; return {missing, unregistered, output} (output = API-format prompt)."""
        return self.page.evaluate(LOAD_AND_CONVERT, workflow)


@pytest.fixture
def frontend(browser, comfy_server):
    settings = comfy_server.user_dir / "default" / "comfy.settings.json"
    assert json.loads(settings.read_text()).get("Comfy.TutorialCompleted") is True
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    fp = FrontendPage(page)
    try:
        page.goto(comfy_server.url + "/", wait_until="domcontentloaded")
        page.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=90_000)
        page.evaluate(MISSING_HOOK)
        yield fp
    finally:
        context.close()
