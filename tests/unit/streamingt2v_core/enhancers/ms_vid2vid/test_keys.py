"""Official Vid2VidSDUNet key names -> diffusers names, against the reference table."""
import json

from streamingt2v_core.enhancers.ms_vid2vid.keys import official_to_diffusers_key
from tests.support.paths import REFINER_DATA as DATA


def test_key_mapping_matches_reference_table():
    rows = [line.split("\t") for line in (DATA / "refiner_unet_to_diffusers_keys.tsv").read_text().splitlines()[1:]]
    assert len(rows) == 1480
    for official, o_shape, diffusers_key, d_shape, transform, _ in rows:
        assert official_to_diffusers_key(official) == diffusers_key, official
        assert (transform == "squeeze(-1)") == (json.loads(o_shape) != json.loads(d_shape))
