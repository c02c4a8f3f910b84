"""Each UI-format workflow in workflows/ loads in the real ComfyUI frontend with no missing node types,
and the frontend's own conversion (app.graphToPrompt) equals its hand-written API-format twin.

Naming convention: workflows/NAME.json (UI format) + workflows/NAME_api.json (API format)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "workflows"
DATA = Path(__file__).resolve().parent / "data"


def ui_workflows() -> list[Path]:
    return sorted(p for p in WORKFLOWS.glob("*.json") if not p.stem.endswith("_api"))


def api_twin(ui: Path) -> Path:
    return ui.with_name(ui.stem + "_api.json")


def normalized(prompt: dict) -> dict:
    """API prompt without UI-only `_meta` titles; node ids as strings."""
    return {str(k): {"class_type": v["class_type"], "inputs": v.get("inputs", {})} for k, v in prompt.items()}


def assert_same_prompt(got: dict, want: dict, name: str) -> None:
    got, want = normalized(got), normalized(want)
    assert sorted(got) == sorted(want), f"{name}: node ids differ: UI gives {sorted(got)}, API twin {sorted(want)}"
    for nid in want:
        assert got[nid]["class_type"] == want[nid]["class_type"], f"{name}: node {nid} class differs"
        assert got[nid]["inputs"] == want[nid]["inputs"], (
            f"{name}: node {nid} ({want[nid]['class_type']}) inputs differ:\n"
            f"  UI -> graphToPrompt: {json.dumps(got[nid]['inputs'], sort_keys=True)}\n"
            f"  API twin:            {json.dumps(want[nid]['inputs'], sort_keys=True)}")


def test_every_ui_workflow_has_an_api_twin():
    uis = ui_workflows()
    assert uis, "workflows/ holds no UI-format workflow"
    lonely = [p.name for p in uis if not api_twin(p).is_file()]
    assert not lonely, f"UI workflows without a NAME_api.json twin: {lonely}"
    orphans = [p.name for p in WORKFLOWS.glob("*_api.json") if not p.with_name(p.stem[:-4] + ".json").is_file()]
    assert not orphans, f"API workflows without a UI-format twin: {orphans}"


def test_frontend_conversion_harness(frontend):
    """The comparison machinery on a core-only workflow: equal when equal, and a missing type is seen."""
    wf = json.loads((DATA / "core_roundtrip.json").read_text())
    res = frontend.load_workflow(wf)
    assert res["missing"] == [] and res["unregistered"] == []
    assert_same_prompt(res["output"], json.loads((DATA / "core_roundtrip_api.json").read_text()), "core_roundtrip")

    res = frontend.load_workflow(json.loads((DATA / "missing_node.json").read_text()))
    assert res["missing"] == ["NoSuchNodeStreamingT2VTest"]
    assert res["unregistered"] == ["NoSuchNodeStreamingT2VTest"]


@pytest.mark.parametrize("ui_path", ui_workflows(), ids=lambda p: p.stem)
def test_workflow_loads_and_matches_api_twin(frontend, ui_path):
    wf = json.loads(ui_path.read_text())
    twin = api_twin(ui_path)
    assert twin.is_file(), f"{ui_path.name} has no API twin {twin.name}"
    res = frontend.load_workflow(wf)
    assert res["missing"] is not None, "the frontend never called afterConfigureGraph"
    assert res["missing"] == [], f"{ui_path.name}: missing node types in the frontend: {res['missing']}"
    assert res["unregistered"] == [], f"{ui_path.name}: node types not registered: {res['unregistered']}"
    assert not frontend.page_errors, f"{ui_path.name}: uncaught page errors: {frontend.page_errors}"
    assert_same_prompt(res["output"], json.loads(twin.read_text()), ui_path.name)
