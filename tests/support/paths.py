"""Where the tests' data and caches live."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
ORACLE = DATA / "oracle"
REFINER_DATA = DATA / "refiner"
CACHE = Path(os.environ.get("STREAMINGT2V_TEST_CACHE", ROOT / ".cache"))
