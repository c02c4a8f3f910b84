"""Enhancers: video-to-video models that refine a whole video by SDEdit with randomized blending
(blending/); I2VGen-XL (i2vgen/) blends the latents after each step instead. One subpackage or module per
model family; `load.load_refiner` picks the family of a source."""
