"""The dtype names the pack's loaders, converters and nodes accept, in one place."""
from __future__ import annotations

import torch

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """'fp16', 'bf16', 'fp32', or str(dtype) for any other dtype."""
    return DTYPE_NAMES.get(dtype, str(dtype))
