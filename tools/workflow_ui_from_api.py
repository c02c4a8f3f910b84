"""Write the UI-format twin of each API-format workflow, made by the real ComfyUI frontend.

    python tools/workflow_ui_from_api.py [workflows/NAME_api.json ...]

Starts ComfyUI headless with the pack and tiny models (tools/make_tiny_models.py), opens the frontend in
headless Chromium, loads each NAME_api.json with `app.loadApiJson`, lays the graph out, and saves
`app.graph.serialize()` as NAME.json. It then checks that `app.graphToPrompt()` of the result equals the
API file (tests/support/workflow_compare.py: up to inputs the server ignores or fills in at its defaults), so
the pair stays in step whenever a node's inputs change. Nodes of ecosystem packs (tests/data/external_nodes) come
from stand-ins with the recorded inputs (tests/support/external_standins). Run it on the oldest ComfyUI leg whose nodes declare
every input of the API file (for core nodes that gained inputs in 0.33: the 0.33 leg, e.g.
`COMFYUI_PATH=$PWD/.comfyui-0.33 .venv-comfy033/bin/python tools/workflow_ui_from_api.py ...`).
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a script: the repository root makes `tests.support` importable

from tests.support.comfy_client import ComfyClient, ComfyServer, write_extra_model_paths  # noqa: E402
from tests.support.workflow_compare import assert_same_prompt  # noqa: E402

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]

CONVERT = """async ([api, title]) => {
  await window.app.loadApiJson(api, title);
  const graph = window.app.graph;
  // one row from left to right in execution order, readable at a glance
  const order = graph.computeExecutionOrder(false);
  let x = 40;
  for (const node of order) {
    node.pos = [x, 80];
    x += Math.max(node.size[0], 260) + 40;
    // seeds stay as written (33 reproduces the official stream) instead of changing after every run
    for (const w of node.widgets || []) if (w.name === "control_after_generate") w.value = "fixed";
  }
  // through JSON: keys the frontend leaves undefined are dropped instead of arriving as null (real nulls stay)
  const workflow = JSON.parse(JSON.stringify(graph.serialize()));
  const prompt = await window.app.graphToPrompt();
  return {workflow, output: prompt.output};
}"""


def convert(api_paths: list[Path]) -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        import subprocess

        subprocess.run([sys.executable, str(REPO / "tools" / "make_tiny_models.py"), str(tmp / "models")], check=True)
        yaml_path = tmp / "extra_model_paths.yaml"
        write_extra_model_paths(yaml_path, tmp / "models")
        # ecosystem nodes a workflow uses (recorded in tests/data/external_nodes) are laid out from stand-ins
        standins = {"streamingt2v_external_standins": REPO / "tests" / "support" / "external_standins"}
        with ComfyServer(tmp / "base", extra_model_paths=yaml_path, extra_packs=standins) as server, \
                sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            client = ComfyClient(server.url)
            page.goto(server.url + "/", wait_until="domcontentloaded")
            page.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=90_000)
            for api_path in api_paths:
                api = json.loads(api_path.read_text())
                name = api_path.name[: -len("_api.json")]
                res = page.evaluate(CONVERT, [api, name])
                try:
                    assert_same_prompt(res["output"], api, api_path.name, object_info=client.object_info)
                except AssertionError as e:
                    raise SystemExit(f"{api_path.name}: the frontend's prompt differs from the API file: {e}") from e
                out = api_path.with_name(name + ".json")
                out.write_text(json.dumps(res["workflow"], indent=2) + "\n")
                print(out)
            browser.close()


if __name__ == "__main__":
    paths = [Path(a) for a in sys.argv[1:]] or sorted((REPO / "workflows").glob("*_api.json"))
    convert(paths)
