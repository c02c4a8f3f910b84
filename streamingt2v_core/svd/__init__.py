"""StreamingSVD (SVD-XT base on ComfyUI's own SVD model): the pure-torch parts StreamingSVD adds.

config.py (the official numbers), sigmas.py (the AYS schedule), cam.py (the CAM's control-frame encoder),
merger.py (the 13 mergers of CAM features into the base UNet's skips and middle block), weights.py (reading
the CAM and mergers from model.safetensors, the CAM-only file), noise.py (the official order of random
draws per chunk), conditioning.py (augmentation, guidance, CLIP input, which frames carry over). The CAM's
UNet part runs as a ComfyUI UNetModel in the bridge; nothing here imports ComfyUI.
"""
