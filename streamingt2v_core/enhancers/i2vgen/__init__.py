"""Third enhancer family: I2VGen-XL (diffusers `ali-vilab/i2vgen-xl` folder), the official StreamingSVD
enhancement: SDEdit at strength 0.97 of 30 steps, per-chunk keyframe images, randomized blending on x_{t-1}."""
from .enhance import enhance_latents, enhance_video, sdedit_begin  # noqa: F401
from .model import I2VGenXLEnhancer, Keyframe, is_i2vgen_folder, load_i2vgen  # noqa: F401
