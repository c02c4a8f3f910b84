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
