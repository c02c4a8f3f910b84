"""Comparing a UI workflow's conversion (the frontend's app.graphToPrompt) with its API-format twin, as the
server would run them: shared by tests/browser/test_workflows_ui.py and tools/workflow_ui_from_api.py.

Two ComfyUI versions read the same files, and a core node may have gained inputs between them (0.33's
WanContextWindowsManual adds freenoise, retain_first_frame, split_conds_to_windows). A difference counts
only where the server would run another prompt: an input the frontend filled in at the server's own
default (defaults_filled_in), or an input of the twin that the server's node does not declare and so
never reads (undeclared_inputs), is the same prompt."""
from __future__ import annotations

import json


def normalized(prompt: dict) -> dict:
    """API prompt without UI-only `_meta` titles; node ids as strings."""
    return {str(k): {"class_type": v["class_type"], "inputs": dict(v.get("inputs", {}))} for k, v in prompt.items()}


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


def declared_inputs(node_info: dict) -> set:
    """Every input name the server's node definition declares (required, optional; not hidden)."""
    return {name for section in ("required", "optional") for name in node_info.get("input", {}).get(section, {})}


def undeclared_inputs(want: dict, node_info: dict) -> set:
    """Inputs of the twin that the server's node does not declare: ComfyUI skips them when it gathers a node's
    inputs (execution.get_input_data walks the declared ones), so the older server runs the prompt unchanged.
    A `parent.sub` key of a V3 DynamicCombo counts as declared when its parent is."""
    declared = declared_inputs(node_info)
    return {key for key in want if key.partition(".")[0] not in declared}


def assert_same_prompt(got: dict, want: dict, name: str, object_info=None) -> None:
    """`object_info(class_type)`, where given, is the server's node definition: inputs the frontend filled in
    with the server's defaults (defaults_filled_in) and inputs of the twin that the server's node does not
    declare (undeclared_inputs) do not count as a difference."""
    got, want = normalized(got), normalized(want)
    assert sorted(got) == sorted(want), f"{name}: node ids differ: UI gives {sorted(got)}, API twin {sorted(want)}"
    for nid in want:
        assert got[nid]["class_type"] == want[nid]["class_type"], f"{name}: node {nid} class differs"
        if object_info is not None:
            info = object_info(want[nid]["class_type"])
            for key in defaults_filled_in(got[nid]["inputs"], want[nid]["inputs"], info):
                del got[nid]["inputs"][key]
            for key in undeclared_inputs(want[nid]["inputs"], info) - set(got[nid]["inputs"]):
                del want[nid]["inputs"][key]
        assert got[nid]["inputs"] == want[nid]["inputs"], (
            f"{name}: node {nid} ({want[nid]['class_type']}) inputs differ:\n"
            f"  UI -> graphToPrompt: {json.dumps(got[nid]['inputs'], sort_keys=True)}\n"
            f"  API twin:            {json.dumps(want[nid]['inputs'], sort_keys=True)}")


def without_nodes(prompt: dict, node_ids) -> dict:
    """`prompt` (normalized) without the nodes `node_ids` and without the inputs linked to them: what the rest
    of a graph is when those nodes are missing from the server (an ecosystem pack not installed)."""
    gone = {str(n) for n in node_ids}
    out = {}
    for key, node in normalized(prompt).items():
        if key in gone:
            continue
        inputs = {k: v for k, v in node["inputs"].items()
                  if not (isinstance(v, list) and len(v) == 2 and str(v[0]) in gone)}
        out[key] = {"class_type": node["class_type"], "inputs": inputs}
    return out
