"""Each UI-format workflow in workflows/ loads in the real ComfyUI frontend with no missing node types,
and the frontend's own conversion (app.graphToPrompt) equals its hand-written API-format twin, up to inputs
that a newer frontend fills in at the server's own defaults (defaults_filled_in).

Naming convention: workflows/NAME.json (UI format) + workflows/NAME_api.json (API format)."""
from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.compat  # both ComfyUI legs (tools/test.sh --comfy033)

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


def declared_default(spec):
    """The value a server uses for an input left out of a prompt: its `default`, else a combo's first choice
    (a V3 DynamicCombo lists its choices as {"key": ..., "inputs": ...}); None when it declares none."""
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    if "default" in opts:
        return opts["default"]
    choices = kind if isinstance(kind, list) else opts.get("options") or []
    if choices:
        return choices[0]["key"] if isinstance(choices[0], dict) else choices[0]
    return None


def sub_input_spec(node_info: dict, parent: str, parent_value, sub: str):
    """The spec of `sub` under the chosen option `parent_value` of the DynamicCombo input `parent`."""
    for section in ("required", "optional"):
        spec = node_info.get("input", {}).get(section, {}).get(parent)
        if spec and spec[0] == "COMFY_DYNAMICCOMBO_V3":
            for option in spec[1].get("options", []):
                if option.get("key") == parent_value:
                    for sub_section in ("required", "optional"):
                        found = option.get("inputs", {}).get(sub_section, {}).get(sub)
                        if found:
                            return found
    return None


def defaults_filled_in(got: dict, want: dict, node_info: dict) -> set:
    """Inputs the frontend wrote that the API twin leaves out, each at the value the server would use without
    it: a newer core node's optional input at its default (CreateVideo's bit_depth in ComfyUI 0.33), or a
    V3 DynamicCombo's sub-input written as `parent.sub` at its default (SaveVideo's format.codec). A twin
    written for the older node means the same prompt; any other extra input, or another value, still differs."""
    filled = set()
    for key in set(got) - set(want):
        parent, dot, sub = key.partition(".")
        if dot:
            spec = sub_input_spec(node_info, parent, got.get(parent), sub)
        else:
            spec = node_info.get("input", {}).get("optional", {}).get(key)
        if spec is not None and got[key] == declared_default(spec):
            filled.add(key)
    return filled


def assert_same_prompt(got: dict, want: dict, name: str, object_info=None) -> None:
    """`object_info(class_type)`, where given, is the server's node definition: inputs the frontend filled in
    with the server's defaults (defaults_filled_in) do not count as a difference."""
    got, want = normalized(got), normalized(want)
    assert sorted(got) == sorted(want), f"{name}: node ids differ: UI gives {sorted(got)}, API twin {sorted(want)}"
    for nid in want:
        assert got[nid]["class_type"] == want[nid]["class_type"], f"{name}: node {nid} class differs"
        if object_info is not None and set(got[nid]["inputs"]) - set(want[nid]["inputs"]):
            info = object_info(want[nid]["class_type"])
            for key in defaults_filled_in(got[nid]["inputs"], want[nid]["inputs"], info):
                del got[nid]["inputs"][key]
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
    """The comparison machinery on a core-only workflow: equal when equal, and a missing type is seen; the
    page is the frontend installed beside the server (on the 0.33.0 leg: the one tools/bootstrap.sh chose)."""
    served = frontend.page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ || null")
    assert served == importlib.metadata.version("comfyui-frontend-package")
    if os.environ.get("STREAMINGT2V_EXPECT_FRONTEND"):
        assert served == os.environ["STREAMINGT2V_EXPECT_FRONTEND"]
    wf = json.loads((DATA / "core_roundtrip.json").read_text())
    res = frontend.load_workflow(wf)
    assert res["missing"] == [] and res["unregistered"] == []
    assert_same_prompt(res["output"], json.loads((DATA / "core_roundtrip_api.json").read_text()), "core_roundtrip")

    res = frontend.load_workflow(json.loads((DATA / "missing_node.json").read_text()))
    assert res["missing"] == ["NoSuchNodeStreamingT2VTest"]
    assert res["unregistered"] == ["NoSuchNodeStreamingT2VTest"]


# A ComfyUI 0.33-style definition of two core nodes, for the rule that forgives defaults the frontend fills in.
SAVE_VIDEO_INFO = {"input": {"required": {"format": ["COMFY_DYNAMICCOMBO_V3", {"options": [
    {"key": "auto", "inputs": {"required": {"codec": ["COMFY_DYNAMICCOMBO_V3", {"options": [
        {"key": "auto", "inputs": {}}, {"key": "h264", "inputs": {}}]}]}}},
    {"key": "mp4", "inputs": {"required": {"codec": ["COMFY_DYNAMICCOMBO_V3", {"options": [
        {"key": "h264", "inputs": {}}, {"key": "auto", "inputs": {}}]}]}}}]}]},
    "optional": {"codec": ["COMFY_DYNAMICCOMBO_V3", {"options": [{"key": "auto", "inputs": {}}]}]}}}
CREATE_VIDEO_INFO = {"input": {"required": {"fps": ["FLOAT", {"default": 30.0}]},
                               "optional": {"bit_depth": ["INT", {"default": 8, "min": 8, "max": 10}]}}}


def test_only_inputs_at_the_servers_defaults_are_forgiven():
    twin = {"format": "auto", "codec": "auto"}
    assert defaults_filled_in({**twin, "format.codec": "auto"}, twin, SAVE_VIDEO_INFO) == {"format.codec"}
    assert defaults_filled_in({**twin, "format.codec": "h264"}, twin, SAVE_VIDEO_INFO) == set()
    # the default of the chosen option's sub-input, not of another option's
    mp4 = {"format": "mp4", "codec": "auto"}
    assert defaults_filled_in({**mp4, "format.codec": "auto"}, mp4, SAVE_VIDEO_INFO) == set()
    assert defaults_filled_in({**mp4, "format.codec": "h264"}, mp4, SAVE_VIDEO_INFO) == {"format.codec"}
    assert defaults_filled_in({"fps": 8.0, "bit_depth": 8}, {"fps": 8.0}, CREATE_VIDEO_INFO) == {"bit_depth"}
    assert defaults_filled_in({"fps": 8.0, "bit_depth": 10}, {"fps": 8.0}, CREATE_VIDEO_INFO) == set()
    assert defaults_filled_in({"fps": 8.0, "audio": None}, {"fps": 8.0}, CREATE_VIDEO_INFO) == set()  # undeclared
    # a required input left out of the twin is a difference, even at its default
    assert defaults_filled_in({"fps": 30.0}, {}, CREATE_VIDEO_INFO) == set()
    with pytest.raises(AssertionError, match="bit_depth"):
        assert_same_prompt({"1": {"class_type": "CreateVideo", "inputs": {"fps": 8.0, "bit_depth": 10}}},
                           {"1": {"class_type": "CreateVideo", "inputs": {"fps": 8.0}}}, "t",
                           object_info=lambda _: CREATE_VIDEO_INFO)


@pytest.mark.parametrize("ui_path", ui_workflows(), ids=lambda p: p.stem)
def test_workflow_loads_and_matches_api_twin(frontend, comfy, ui_path):
    wf = json.loads(ui_path.read_text())
    twin = api_twin(ui_path)
    assert twin.is_file(), f"{ui_path.name} has no API twin {twin.name}"
    res = frontend.load_workflow(wf)
    assert res["missing"] is not None, "the frontend never called afterConfigureGraph"
    assert res["missing"] == [], f"{ui_path.name}: missing node types in the frontend: {res['missing']}"
    assert res["unregistered"] == [], f"{ui_path.name}: node types not registered: {res['unregistered']}"
    assert not frontend.page_errors, f"{ui_path.name}: uncaught page errors: {frontend.page_errors}"
    # older frontends validate the file against their schema and say so in a toast, not a page error
    toasts = frontend.page.evaluate(
        "() => Array.from(document.querySelectorAll('.p-toast-message')).map(t => t.innerText)")
    assert not [t for t in toasts if "Invalid workflow" in t], f"{ui_path.name}: the frontend rejects it: {toasts}"
    assert_same_prompt(res["output"], json.loads(twin.read_text()), ui_path.name, object_info=comfy.object_info)
