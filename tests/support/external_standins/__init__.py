"""Stand-ins for the ecosystem nodes our workflows use (never shipped, never run): node classes with the ids,
inputs and outputs recorded from those packs' source in tests/data/external_nodes/*.json, so that
tools/workflow_ui_from_api.py can lay out a workflow holding them in the real frontend. The tests load the
frontend without them, where exactly these node types are missing (tests/browser/test_workflows_ui.py)."""
import json
from pathlib import Path

RECORDS = Path(__file__).resolve().parents[2] / "data" / "external_nodes"


def records() -> dict:
    """node id -> its record (with the pack's name under "pack") for every recorded pack."""
    out = {}
    for path in sorted(RECORDS.glob("*.json")):
        pack = json.loads(path.read_text())
        for node_id, node in pack["nodes"].items():
            out[node_id] = dict(node, pack=pack["pack"], url=pack["url"])
    return out


def _standin(node_id: str, node: dict) -> type:
    def run(self, **_inputs):
        raise RuntimeError(f"{node_id} is a layout stand-in; install {node['pack']} ({node['url']}) to run it")

    return type(node_id, (), {
        "CATEGORY": node["category"],
        "RETURN_TYPES": tuple(t for t, _ in node["outputs"]),
        "RETURN_NAMES": tuple(n for _, n in node["outputs"]),
        "FUNCTION": "run",
        "INPUT_TYPES": classmethod(lambda cls: {"required": {k: tuple(v) for k, v in node["required"]},
                                               "optional": {k: tuple(v) for k, v in node["optional"]}}),
        "run": run,
    })


NODE_CLASS_MAPPINGS = {node_id: _standin(node_id, node) for node_id, node in records().items()}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: node["display_name"] for node_id, node in records().items()}
