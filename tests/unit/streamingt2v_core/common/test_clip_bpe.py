"""The real-size offline tokenizer (streamingt2v_core.common.clip_bpe.CLIPTokenizer, built from open_clip's shipped BPE
file) against open_clip's own tokenizer, and the official StreamingT2V padding."""
import pytest
import torch

from streamingt2v_core.t2v.config import infer_config
from streamingt2v_core.common.clip_bpe import CLIPTokenizer

from tests.support.paths import DATA

LONG = "a slow cinematic drone shot over " + "a green valley and " * 30 + "the end"
PROMPTS = [
    "A cat running on the street, ",  # official_refiner.md section 3's example
    "",
    "  Wide shot of a Battlefield,\n stormtroopers running... 4K &amp; \"cinematic\"  ",
    "it's naïve café art: 東京 at night 🙂 (3.14)",
    LONG,
]


@pytest.fixture(scope="module")
def tok():
    # the size the real checkpoint's shapes give (token_embedding 49408 x 1024, position_embedding 77 x 1024)
    shapes = {}
    with open(DATA / "streaming_t2v_manifest.tsv") as f:
        next(f)
        for line in f:
            key, shape, _, _ = line.rstrip("\n").split("\t")
            if key.startswith("text_encoder.text_model.embeddings."):
                shapes[key] = tuple(int(x) for x in shape.strip("[]").split(",") if x.strip())
    cfg = infer_config(shapes)
    assert cfg.text["vocab_size"] == 49408 and cfg.text_tokens == 77
    return CLIPTokenizer(cfg.text["vocab_size"], cfg.text_tokens)


def test_real_vocabulary_and_layout(tok):
    assert len(tok.encoder) == 49408
    assert (tok.sot, tok.eot, tok.length) == (49406, 49407, 77)
    # The official stage 2 tokenizes with the ms-1.7b repo's HF CLIPTokenizer, whose special_tokens_map sets
    # pad_token "!" = id 0 (its tokenizer_config says <|endoftext|>, but the map wins; cf. tests/data/oracle/
    # tiny_config.json). Not 49407, which SD-1.x-style HF tokenizers pad with. open_clip also pads with 0.
    assert tok.pad_id == 0 and tok.encoder["!"] == 0
    ids = tok(["A cat running on the street, "])
    assert ids.shape == (1, 77) and ids.dtype == torch.long
    assert ids[0, :10].tolist() == [49406, 320, 2368, 2761, 525, 518, 2012, 267, 49407, 0]
    assert (ids[0, 9:] == 0).all()
    assert tok([""])[0, :3].tolist() == [49406, 49407, 0]


def test_ids_equal_open_clip(tok):
    import open_clip

    ours = tok(PROMPTS)
    theirs = open_clip.get_tokenizer("ViT-H-14")(PROMPTS)  # built-in config: no download
    assert torch.equal(ours, theirs.long())
    assert torch.equal(ours, open_clip.tokenize(PROMPTS).long())


def test_long_prompt_truncated_with_end_token(tok):
    full = tok.encode(LONG)
    assert len(full) > 75
    ids = tok([LONG])[0]
    assert ids.shape == (77,) and ids[0] == 49406 and ids[-1] == 49407
    assert ids[1:76].tolist() == full[:75]  # the first 75 tokens kept, the end token forced last
    assert 0 not in ids.tolist()
