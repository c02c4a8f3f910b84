"""The pack's ComfyUI nodes: thin translations between ComfyUI types and streamingt2v_core calls."""
import importlib
import importlib.util

from .assemble import ASSEMBLE_NODES
from .init import INIT_NODES
from .loader import LOADER_NODES
from .stream import STREAM_NODES

# Node lists other modules of the pack provide, when those modules are present.
OPTIONAL_NODE_LISTS = (("refiner", "REFINER_NODES"), ("metrics", "METRICS_NODES"))


def all_nodes() -> list:
    nodes = LOADER_NODES + INIT_NODES + STREAM_NODES + ASSEMBLE_NODES
    for module_name, list_name in OPTIONAL_NODE_LISTS:
        if importlib.util.find_spec(f"{__name__}.{module_name}") is None:
            continue
        module = importlib.import_module(f".{module_name}", __name__)  # its errors propagate
        nodes = nodes + list(getattr(module, list_name))
    return nodes
