"""`python -m streamingt2v_core.refiner`: the MS-Vid2Vid-XL converter, which lives in `enhancers/ms_vid2vid/convert.py`."""
from .enhancers.ms_vid2vid.convert import convert_official_folder, main  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
