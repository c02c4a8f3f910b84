"""The ComfyUI-aware layer between the node classes and the pure-torch core.

    nodes -> comfy_bridge -> streamingt2v_core      (never upward: the core never imports this package)

patcher.py  our torch models as ComfyUI ModelPatchers; the dtype choices of the loaders
models.py   the pack's model folders: registration, what they offer, name and path checks
memory.py   the core's memory plan, filled from ComfyUI's view of the device
run.py      one heavy-run helper: progress, interrupt, previews, cleanup and OOM advice
oom.py      out-of-memory errors that name the settings which lower memory
context_fuse.py  randomized blending as a fuse method of core's context windows (any ComfyUI video MODEL)
"""
