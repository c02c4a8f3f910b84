"""`python -m streamingt2v_core.metrics VIDEO [--prompt TEXT] [--json]` (see cli.py)."""
from .cli import main

raise SystemExit(main())
