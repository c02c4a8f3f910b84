"""StreamingT2V (ModelScope base, stage 2): the configuration (config.py), the weights it reads (weights.py),
the text encoder (text.py), the base UNet (unet.py) with the CAM and its mergers (cam.py) and the APM with
its cross-attention mixing (apm.py), the whole model (model.py), DDIM (ddim.py), the autoregressive chunk
loop (extend.py), the first chunk from text with ModelScope T2V (init_modelscope.py), its memory facts
(memory.py) and the converter of the official checkpoint (convert.py)."""
