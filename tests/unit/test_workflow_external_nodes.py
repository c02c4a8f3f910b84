"""Workflows that use ecosystem nodes (svd_long_video_full: ComfyUI-Tween's EMA-VFI) against those nodes'
inputs and outputs as recorded from the pack's source (tests/data/external_nodes), so the graph loads and runs
for a user who has the pack; and the README names exactly those nodes and that pack."""
from __future__ import annotations

import json
import re

import pytest

from tests.support.external_standins import records
from tests.support.paths import ROOT

pytestmark = pytest.mark.i2vgen
WORKFLOWS = ROOT / "workflows"


def external_uses() -> list:
    out = []
    for path in sorted(WORKFLOWS.glob("*_api.json")):
        graph = json.loads(path.read_text())
        out += [(path.name, graph, key) for key, node in graph.items() if node["class_type"] in records()]
    return out


def test_the_full_workflow_uses_the_official_interpolator_settings():
    graph = json.loads((WORKFLOWS / "svd_long_video_full_api.json").read_text())
    by_type = {v["class_type"]: v["inputs"] for v in graph.values()}
    # EMA-VFI "ours" (the large model, fixed t = 0.5) with test-time augmentation, once x2, then 24 fps
    assert by_type["LoadEMAVFIModel"] == {"model_path": "ours.pkl", "tta": True}
    assert by_type["EMAVFIInterpolate"]["multiplier"] == 2 and by_type["EMAVFIInterpolate"]["target_fps"] == 0.0
    assert by_type["CreateVideo"]["fps"] == 24.0
    assert {n for n, _, _ in external_uses()} == {"svd_long_video_full_api.json"}


@pytest.mark.parametrize("name,graph,key", external_uses(), ids=lambda v: v if isinstance(v, str) else "")
def test_external_node_inputs_are_the_packs(name, graph, key):
    node = graph[key]
    rec = records()[node["class_type"]]
    required = dict(rec["required"])
    declared = {**required, **dict(rec["optional"])}
    given = node["inputs"]
    assert set(required) <= set(given) <= set(declared), (name, key, sorted(given))
    for input_name, value in given.items():
        kind, opts = declared[input_name][0], declared[input_name][1]
        if isinstance(value, list):  # a link: the source's output type is the input's type
            source = graph[value[0]]
            if source["class_type"] in records():
                out_type = records()[source["class_type"]]["outputs"][value[1]][0]
            else:
                out_type = {"I2VGenXLEnhancer": ["IMAGE"], "ImageFromBatch": ["IMAGE"]}[source["class_type"]][value[1]]
            assert out_type == kind, (name, key, input_name)
        elif isinstance(kind, list):
            assert value in kind, (name, key, input_name, value)
        elif kind in ("INT", "FLOAT"):
            assert opts.get("min", value) <= value <= opts.get("max", value), (name, key, input_name)
        elif kind == "BOOLEAN":
            assert isinstance(value, bool)


def test_the_readme_names_exactly_the_external_nodes_and_their_pack():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("External nodes of `svd_long_video_full`:")
    paragraph = readme[start:readme.index("\n\n", start)].replace("\n", " ")
    listed = paragraph.split(":", 1)[1].split(" from the ", 1)[0]  # "`A`, `B`" before " from the <pack> pack"
    named = set(re.findall(r"`(\w+)`", listed))
    used = {graph[key]["class_type"] for _, graph, key in external_uses()}
    assert named == used
    assert all(records()[n]["pack"] in paragraph and records()[n]["url"] in paragraph for n in used)
