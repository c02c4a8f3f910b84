"""The pack's ComfyUI nodes: node classes only. Each reads its sockets, calls one core or comfy_bridge
function and wraps the outputs; socket types live in types.py."""
from .assemble import ASSEMBLE_NODES
from .context import CONTEXT_NODES
from .enhance import ENHANCE_NODES
from .extend import EXTEND_NODES
from .init import INIT_NODES
from .load import LOAD_NODES
from .metrics import METRICS_NODES
from .state import STATE_NODES
from .svd import SVD_NODES

NODES = LOAD_NODES + INIT_NODES + EXTEND_NODES + ASSEMBLE_NODES + ENHANCE_NODES + METRICS_NODES + CONTEXT_NODES + SVD_NODES + STATE_NODES


def all_nodes() -> list:
    return list(NODES)
