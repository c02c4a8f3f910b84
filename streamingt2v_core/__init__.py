"""StreamingT2V in pure torch (no ComfyUI imports): the official stage-2 model, its loading and
conversion, the streaming loop, the refiner and the metrics."""
from .config import StreamingT2VConfig, load_config
from .model import StreamingT2V, load_streamingt2v, official_state_dict_shapes

__all__ = ["StreamingT2V", "StreamingT2VConfig", "load_config", "load_streamingt2v", "official_state_dict_shapes"]
