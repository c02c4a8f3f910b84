"""The layers of the product code, read from its import statements (stdlib `ast`, nothing is imported).

    nodes -> comfy_bridge -> streamingt2v_core          never upward
    inside the core: families (t2v, svd, enhancers/<name>) import common and blending, never each other;
    common, blending and metrics import no family; metrics imports only common;
    the core never imports ComfyUI (comfy, comfy_api, comfy_extras, folder_paths, server, ...).

Every import counts, also one inside a function, and so do the lazy export table of
`streamingt2v_core/__init__.py` and `importlib.import_module` calls with a literal name.
`test_checker_finds_each_kind_of_violation` breaks every rule on purpose in a small fake tree, so the
checker is known to see what it guards.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.paths import ROOT

PRODUCT = ("__init__.py", "nodes", "comfy_bridge", "streamingt2v_core")
CORE = "streamingt2v_core"
# Top-level modules of ComfyUI (and its server) that the core and anything below the bridge must not import.
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server", "execution",
                 "latent_preview", "node_helpers", "comfyui_version", "app"}
FAMILIES = ("t2v", "svd", "enhancers")
SHARED = ("common", "blending", "metrics")
CORE_ROOT_MODULES_MAX = 8


def product_files(root: Path) -> list[Path]:
    files = []
    for entry in PRODUCT:
        path = root / entry
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
    return files


def module_name(root: Path, path: Path) -> tuple[str, bool]:
    """Dotted name relative to the pack root ('' for the pack's own __init__.py) and whether it is a package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    package = module.split(".") if module else []
    if not is_package:
        package = package[:-1]
    if level - 1 > len(package):
        return "<beyond the pack root>"
    base = package[:len(package) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(root: Path, path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported name, is the pack's own) for every import in `path`. Own names are dotted from the pack
    root (`streamingt2v_core.common.weights`); a `from X import a` also yields `X.a` (a may be a module)."""
    module, is_package = module_name(root, path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                own = alias.name.split(".")[0] in ("streamingt2v_core", "comfy_bridge")
                found.append((node.lineno, alias.name, own))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve(module, is_package, node.level, node.module)
                found.append((node.lineno, base, True))
                found += [(node.lineno, f"{base}.{a.name}" if base else a.name, True) for a in node.names]
            else:
                own = (node.module or "").split(".")[0] in ("streamingt2v_core", "comfy_bridge")
                found.append((node.lineno, node.module or "", own))
                if own:
                    found += [(node.lineno, f"{node.module}.{a.name}", True) for a in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            name = node.args[0].value
            if name.startswith("."):
                level = len(name) - len(name.lstrip("."))
                found.append((node.lineno, _resolve(module, is_package, level, name.lstrip(".") or None), True))
            else:
                found.append((node.lineno, name, name.split(".")[0] in ("streamingt2v_core", "comfy_bridge")))
    if path.relative_to(root).as_posix() == f"{CORE}/__init__.py":
        found += _lazy_exports(tree, module)
    return found


def _lazy_exports(tree: ast.Module, module: str) -> list[tuple[int, str, bool]]:
    """The `_EXPORTS = {name: submodule}` table of the core's lazy __init__."""
    out = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            for value in getattr(node.value, "values", []):
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    out.append((node.lineno, f"{module}.{value.value}", True))
    return out


def layer(name: str) -> str:
    top = name.split(".")[0]
    return {"nodes": "nodes", "comfy_bridge": "bridge", CORE: "core", "": "entry"}.get(top, "other")


def core_group(name: str) -> str | None:
    """'t2v', 'svd', 'enhancers.<name>', 'enhancers' (their dispatch), 'common', 'blending', 'metrics', or
    None for the core's root modules (the export table and the command-line shims)."""
    parts = name.split(".")
    if parts[0] != CORE or len(parts) < 2:
        return None
    if parts[1] == "enhancers":
        return f"enhancers.{parts[2]}" if len(parts) > 2 and parts[2] not in ("__init__", "load") else "enhancers"
    return parts[1] if parts[1] in FAMILIES + SHARED else None


def is_family(group: str | None) -> bool:
    return group is not None and group.split(".")[0] in FAMILIES


def violations(root: Path) -> list[str]:
    problems = []
    for path in product_files(root):
        module, _ = module_name(root, path)
        src_layer = layer(module) if module else "entry"
        src_group = core_group(module)
        where = path.relative_to(root).as_posix()
        for line, name, own in imports_of(root, path):
            top = name.split(".")[0]
            if not own:
                if src_layer == "core" and top in COMFY_MODULES:
                    problems.append(f"{where}:{line}: the core imports ComfyUI ({name})")
                continue
            if name.startswith("<"):
                problems.append(f"{where}:{line}: relative import {name}")
                continue
            dst_layer = layer(name)
            if src_layer == "core" and dst_layer in ("bridge", "nodes", "entry"):
                problems.append(f"{where}:{line}: the core imports the {dst_layer} layer ({name})")
            elif src_layer == "bridge" and dst_layer in ("nodes", "entry"):
                problems.append(f"{where}:{line}: the bridge imports the {dst_layer} layer ({name})")
            if src_layer != "core" or dst_layer != "core":
                continue
            dst_group = core_group(name)
            if src_group is None or dst_group is None or src_group == dst_group:
                continue
            if src_group == "metrics" and dst_group != "common":
                problems.append(f"{where}:{line}: metrics imports {dst_group} ({name}); metrics imports only common")
            elif src_group in SHARED and is_family(dst_group):
                problems.append(f"{where}:{line}: {src_group} imports the family {dst_group} ({name})")
            elif src_group == "common" and dst_group != "common":
                problems.append(f"{where}:{line}: common imports {dst_group} ({name}); common names nothing above it")
            elif is_family(src_group) and is_family(dst_group):
                dispatch = src_group == "enhancers" and dst_group.startswith("enhancers.")
                if not dispatch:
                    problems.append(f"{where}:{line}: the family {src_group} imports the family {dst_group} ({name})")
            elif is_family(src_group) and dst_group == "metrics":
                problems.append(f"{where}:{line}: the family {src_group} imports metrics ({name})")
    return problems


def test_product_code_imports_only_downward():
    problems = violations(ROOT)
    assert not problems, "import layers broken:\n" + "\n".join(problems)


def test_core_root_is_small():
    root_modules = sorted(p.name for p in (ROOT / CORE).glob("*.py"))
    assert len(root_modules) <= CORE_ROOT_MODULES_MAX, root_modules
    folders = sorted(p.name for p in (ROOT / CORE).iterdir() if p.is_dir() and p.name != "__pycache__")
    assert {"common", "blending", "t2v", "enhancers", "metrics"} <= set(folders), folders


def test_checker_sees_the_real_edges():
    """The checker reads the tree it guards: the nodes reach the core and the bridge, a family reaches common."""
    edges = {(module_name(ROOT, p)[0], name) for p in product_files(ROOT) for _, name, own in imports_of(ROOT, p) if own}
    assert any(src.startswith("nodes") and dst.startswith(CORE) for src, dst in edges)
    assert any(src.startswith("nodes") and dst.startswith("comfy_bridge") for src, dst in edges)
    assert any(src.startswith(f"{CORE}.t2v") and dst.startswith(f"{CORE}.common") for src, dst in edges)
    assert any(src == CORE and dst.startswith(f"{CORE}.t2v") for src, dst in edges)  # the lazy export table


FAKE_TREE = {
    "__init__.py": "from .nodes import x\n",
    "nodes/__init__.py": "from ..comfy_bridge import run\nfrom ..streamingt2v_core.t2v import model\n",
    "comfy_bridge/__init__.py": "import comfy.model_management\nfrom ..nodes import types\n",
    "streamingt2v_core/__init__.py": "_EXPORTS = {'load': 't2v.model'}\n",
    "streamingt2v_core/common/weights.py": "def f():\n    from ..t2v import config\n",
    "streamingt2v_core/blending/cuts.py": "from ..enhancers.ms_vid2vid import solver\n",
    "streamingt2v_core/metrics/report.py": "from ..blending import cuts\n",
    "streamingt2v_core/t2v/model.py": "import folder_paths\nfrom ..svd import cam\nfrom ..common import weights\n",
    "streamingt2v_core/enhancers/load.py": "from .ms_vid2vid import model\nfrom .diffusers_t2v import x\n",
    "streamingt2v_core/enhancers/ms_vid2vid/model.py": "from ..diffusers_t2v import x\nfrom ...blending import cuts\n",
    "streamingt2v_core/enhancers/diffusers_t2v.py": "import importlib\nimportlib.import_module('streamingt2v_core.t2v.text')\n",
    "streamingt2v_core/svd/cam.py": "from ...comfy_bridge import patcher\n",
}


@pytest.mark.parametrize("expected", [
    "comfy_bridge/__init__.py:2: the bridge imports the nodes layer",
    "streamingt2v_core/common/weights.py:2: common imports the family t2v",
    "streamingt2v_core/blending/cuts.py:1: blending imports the family enhancers.ms_vid2vid",
    "streamingt2v_core/metrics/report.py:1: metrics imports blending",
    "streamingt2v_core/t2v/model.py:1: the core imports ComfyUI (folder_paths)",
    "streamingt2v_core/t2v/model.py:2: the family t2v imports the family svd",
    "streamingt2v_core/enhancers/ms_vid2vid/model.py:1: the family enhancers.ms_vid2vid imports the family "
    "enhancers.diffusers_t2v",
    "streamingt2v_core/enhancers/diffusers_t2v.py:2: the family enhancers.diffusers_t2v imports the family t2v",
    "streamingt2v_core/svd/cam.py:1: the core imports the bridge layer",
])
def test_checker_finds_each_kind_of_violation(tmp_path, expected):
    for rel, src in FAKE_TREE.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(src)
    problems = violations(tmp_path)
    assert any(p.startswith(expected) for p in problems), "\n".join(problems)


def test_checker_allows_the_permitted_edges(tmp_path):
    """Downward and sideways-within-a-group imports pass: the fake tree's allowed lines raise nothing."""
    allowed = {
        "__init__.py": "from .nodes import x\nfrom .comfy_bridge import models\n",
        "nodes/extend.py": "from ..comfy_bridge import run\nfrom ..streamingt2v_core.t2v import extend\n",
        "comfy_bridge/run.py": "import comfy.utils\nfrom ..streamingt2v_core.common import memory\n",
        "streamingt2v_core/__init__.py": "_EXPORTS = {'load': 't2v.model', 'refine': 'blending.sdedit'}\n",
        "streamingt2v_core/t2v/model.py": "from ..common import weights\nfrom ..blending import cuts\nfrom . import cam\n",
        "streamingt2v_core/enhancers/load.py": "from .ms_vid2vid import model\nfrom .diffusers_t2v import x\n",
        "streamingt2v_core/metrics/report.py": "from ..common import frames\nfrom .flow import get_flow\n",
        "streamingt2v_core/blending/sdedit.py": "from ..common import frames\nfrom .protocol import Enhancer\n",
    }
    for rel, src in allowed.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(src)
    assert violations(tmp_path) == []
