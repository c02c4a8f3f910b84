"""Memory options for small cards, pure torch: sequential offload of the parts not in use (offload.py),
feed-forward in token chunks (chunking.py), a meta-device estimate and a live count of activation memory
(estimate.py), and the one plan a heavy run follows, from the node's memory mode (plan.py).

None of them changes what is computed: offload and chunking give the same numbers (tests under
tests/unit/streamingt2v_core/common/memory/). Tricks only the benchmark uses (fp8 storage, attention slices,
the CAM / base-UNet swap) live in bench/memory_tricks.py.
"""
from .chunking import set_feed_forward_chunking
from .estimate import LiveTensorBytes, activation_peak_bytes
from .offload import SequentialOffload, sequential_offload
from .plan import (FEED_FORWARD_CHUNK, MEMORY_MODES, MemoryPlan, applied, low_memory, memory_mode_problem, plan,
                   wants_low_memory)

__all__ = [
    "FEED_FORWARD_CHUNK", "MEMORY_MODES", "MemoryPlan", "applied", "low_memory", "memory_mode_problem", "plan",
    "wants_low_memory", "SequentialOffload", "sequential_offload", "set_feed_forward_chunking", "LiveTensorBytes",
    "activation_peak_bytes",
]

