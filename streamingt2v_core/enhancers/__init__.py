"""Enhancers: video-to-video models that refine a whole video by SDEdit with randomized blending
(blending/). One subpackage or module per model family; `load.load_refiner` picks the family of a source."""
