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

from tests.support.external_standins import records as external_nodes
from tests.support.workflow_compare import assert_same_prompt, defaults_filled_in, undeclared_inputs, without_nodes

pytestmark = pytest.mark.compat  # both ComfyUI legs (tools/test.sh --comfy033)

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "workflows"
DATA = Path(__file__).resolve().parent / "data"


def ui_workflows() -> list[Path]:
    return sorted(p for p in WORKFLOWS.glob("*.json") if not p.stem.endswith("_api"))


def api_twin(ui: Path) -> Path:
    return ui.with_name(ui.stem + "_api.json")


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


# ComfyUI 0.3.75's WanContextWindowsManual, which lacks 0.33's freenoise / retain_first_frame / split_conds_to_windows.
WAN_CONTEXT_0375_INFO = {"input": {"required": {
    "model": ["MODEL", {}], "context_length": ["INT", {"default": 81}], "context_overlap": ["INT", {"default": 30}],
    "context_schedule": [["standard_static", "standard_uniform"], {}], "context_stride": ["INT", {"default": 1}],
    "closed_loop": ["BOOLEAN", {"default": False}], "fuse_method": [["pyramid", "flat"], {"default": "pyramid"}]}}}


@pytest.mark.native_blend
def test_twin_inputs_the_server_does_not_declare_are_not_a_difference():
    twin = {"model": ["1", 0], "context_length": 81, "context_overlap": 32, "context_schedule": "standard_static",
            "context_stride": 1, "closed_loop": False, "fuse_method": "pyramid",
            "freenoise": False, "retain_first_frame": False, "split_conds_to_windows": False}
    older = {k: v for k, v in twin.items() if k not in ("freenoise", "retain_first_frame", "split_conds_to_windows")}
    assert undeclared_inputs(twin, WAN_CONTEXT_0375_INFO) == {"freenoise", "retain_first_frame", "split_conds_to_windows"}
    assert undeclared_inputs(older, WAN_CONTEXT_0375_INFO) == set()
    want = {"1": {"class_type": "WanContextWindowsManual", "inputs": twin}}
    assert_same_prompt({"1": {"class_type": "WanContextWindowsManual", "inputs": older}}, want, "t",
                       object_info=lambda _: WAN_CONTEXT_0375_INFO)
    assert "freenoise" in twin  # the caller's twin is not changed
    # a declared input still counts, and so does an undeclared one the frontend did write with another value
    with pytest.raises(AssertionError, match="fuse_method"):
        assert_same_prompt({"1": {"class_type": "WanContextWindowsManual", "inputs": {**older, "fuse_method": "flat"}}},
                           want, "t", object_info=lambda _: WAN_CONTEXT_0375_INFO)
    with pytest.raises(AssertionError, match="freenoise"):
        assert_same_prompt({"1": {"class_type": "WanContextWindowsManual", "inputs": {**twin, "freenoise": True}}},
                           want, "t", object_info=lambda _: WAN_CONTEXT_0375_INFO)
    # without the server's definition nothing is forgiven
    with pytest.raises(AssertionError, match="freenoise"):
        assert_same_prompt({"1": {"class_type": "WanContextWindowsManual", "inputs": older}}, want, "t")


# workflows of the native-model context windows (issue 12): their UI checks run with `-m native_blend` too
NATIVE_BLEND_WORKFLOWS = {"refine_long_video_native", "long_video_native_context"}
I2VGEN_WORKFLOWS = {"svd_long_video_full"}  # issue 14: uses an ecosystem pack's nodes


def marks_of(stem: str) -> list:
    return [pytest.mark.native_blend] if stem in NATIVE_BLEND_WORKFLOWS else \
        [pytest.mark.i2vgen] if stem in I2VGEN_WORKFLOWS else []


@pytest.mark.parametrize("ui_path", [pytest.param(p, id=p.stem, marks=marks_of(p.stem)) for p in ui_workflows()])
def test_workflow_loads_and_matches_api_twin(frontend, comfy, ui_path):
    """Missing node types: none, except the ecosystem nodes the workflow uses (tests/data/external_nodes),
    which the test server does not have: exactly those are missing, and the rest of the graph converts to the
    twin's rest."""
    wf = json.loads(ui_path.read_text())
    twin = api_twin(ui_path)
    assert twin.is_file(), f"{ui_path.name} has no API twin {twin.name}"
    want = json.loads(twin.read_text())
    external = {k for k, v in want.items() if v["class_type"] in external_nodes()}
    res = frontend.load_workflow(wf)
    assert res["missing"] is not None, "the frontend never called afterConfigureGraph"
    expected_missing = sorted({want[k]["class_type"] for k in external})
    assert sorted(res["missing"]) == expected_missing, f"{ui_path.name}: missing node types: {res['missing']}"
    assert sorted(res["unregistered"]) == expected_missing, f"{ui_path.name}: not registered: {res['unregistered']}"
    assert not frontend.page_errors, f"{ui_path.name}: uncaught page errors: {frontend.page_errors}"
    # older frontends validate the file against their schema and say so in a toast, not a page error
    toasts = frontend.page.evaluate(
        "() => Array.from(document.querySelectorAll('.p-toast-message')).map(t => t.innerText)")
    assert not [t for t in toasts if "Invalid workflow" in t], f"{ui_path.name}: the frontend rejects it: {toasts}"
    got = without_nodes(res["output"], external) if external else res["output"]
    assert_same_prompt(got, without_nodes(want, external) if external else want, ui_path.name,
                       object_info=comfy.object_info)
