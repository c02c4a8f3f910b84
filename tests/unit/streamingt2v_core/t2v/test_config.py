"""t2v.config: the chunk arithmetic the paper fixes, asked of the config; the keys checkpoints may carry
that the model does not hold."""
from streamingt2v_core.t2v.config import DROPPED_KEYS, StreamingT2VConfig
from streamingt2v_core.t2v.model import build_on_meta


def test_chunk_numbers():
    cfg = StreamingT2VConfig()
    assert (cfg.chunk_frames, cfg.cond_frames) == (16, 8)
    assert cfg.new_frames_per_chunk == 8 and cfg.min_stream_frames == 8
    other = StreamingT2VConfig(chunk_frames=24, cond_frames=6)
    assert other.new_frames_per_chunk == 18 and other.min_stream_frames == 6


def test_dropped_keys_are_non_persistent_buffers():
    model = build_on_meta(StreamingT2VConfig())
    state = model.state_dict()
    buffers = dict(model.named_buffers())
    assert DROPPED_KEYS and all(k not in state and k in buffers for k in DROPPED_KEYS)


def test_infer_config_tolerates_odd_shapes_of_the_keys_it_reads():
    """Each key the shapes are read from, with the wrong number of dims or one element: the base value stays
    (before, `infer_config` indexed or unpacked such shapes: IndexError / ValueError naming no key)."""
    import pytest

    from streamingt2v_core.t2v.config import infer_config, load_config
    from tests.support.paths import ORACLE
    from tests.support.tiny import read_manifest

    shapes = {k: tuple(s) for k, s, _ in read_manifest(ORACLE / "tiny_manifest.tsv")}
    base = load_config(ORACLE / "tiny_config.json")
    ref = infer_config(shapes, base)
    assert ref.unet == base.unet and ref.text == base.text  # the tiny shapes agree with its config
    keys = ["base_model.down_blocks.0.resnets.0.conv2.weight", "unet.controlnet_cond_embedding.conv_in.weight",
            "vae.quant_conv.weight", "text_encoder.text_model.embeddings.token_embedding.weight",
            "image_encoder.model.visual.conv1.weight", "image_encoder.model.visual.proj",
            "image_encoder.model.token_embedding.weight", "image_encoder.model.visual.positional_embedding"]
    for key in keys:
        for odd in ((), (1,), (1, 1, 1, 1, 1)):
            try:
                got = infer_config(dict(shapes, **{key: odd}), base)
            except (IndexError, ValueError, TypeError) as exc:
                pytest.fail(f"{key} {odd}: {type(exc).__name__}: {exc}")
            assert got == ref, f"{key} {odd}: the odd shape changed the config"
