"""Parts shared by every model family; nothing here names a family (an import-graph test holds this).

weights.py     safe reading of weights files (restricted unpickler, memory-mapped safetensors); the one
               load error, CheckpointError
state_dict.py  key and shape checks that name the file, the keys and the fix
unet3d.py      the diffusers UNet3D: its architecture from tensor shapes, its encoder forward pieces
attention.py   scaled-dot-product attention for diffusers' Attention (optionally in query slices)
guidance.py    classifier-free guidance and its std rescale
sampler.py     the small protocol the samplers implement (DDIM, DPM-Solver++ SDE, later EDM)
clip.py        OpenAI CLIP image normalisation;  clip_bpe.py  CLIP's BPE tokenizer, offline
frames.py      fitting frames to a size or canvas (resize, crop, pad)
dtypes.py      the dtype names the loaders, converters and nodes accept
memory/        offload, chunking, activation estimates and the memory plan of a heavy run
"""
