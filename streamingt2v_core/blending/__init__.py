"""Randomized blending (paper section 3.3), engine-agnostic: where the overlapping chunks of a long video
start and which chunk each frame's prediction comes from at every step (cuts.py), and the SDEdit loop that
refines a whole video chunk by chunk (sdedit.py) against the Enhancer protocol (protocol.py). Imports no
model family: every enhancer implements the protocol instead."""
