"""`python -m streamingt2v_core.convert`: the StreamingT2V converter, which lives in `t2v/convert.py`."""
from .t2v.convert import convert, main  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
