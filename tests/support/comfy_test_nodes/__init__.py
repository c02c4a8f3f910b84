"""Test-only ComfyUI custom nodes, linked into the test server's custom_nodes/ next to the pack (never shipped).

TinyWanTextConditioning stands in for CLIPLoader + CLIPTextEncode with umT5-XXL, which cannot be made tiny
(its config is fixed): a Wan 2.1 CONDITIONING of `tokens` text-embedding rows of width 4096 (the width
every Wan 2.1 DiT's text_embedding takes), drawn from a seed derived from the text, so the same text gives
the same conditioning and another text another one.

TinySVDCheckpointLoader stands in for core's ImageOnlyCheckpointLoader with the oracle's tiny StreamingSVD
checkpoint, which core's loaders refuse at its widths (tiny_svd.py)."""
import hashlib

import torch

WAN_TEXT_DIM = 4096


class TinyWanTextConditioning:
    CATEGORY = "testing"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True, "default": ""}),
                             "tokens": ("INT", {"default": 8, "min": 1, "max": 512})}}

    def encode(self, text, tokens):
        seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
        g = torch.Generator().manual_seed(seed)
        # umT5 outputs are small (layer-normed, |x| ~ 0.1-1); std 0.5 keeps the tiny DiT's inputs O(1)
        cond = 0.5 * torch.randn((1, tokens, WAN_TEXT_DIM), generator=g, dtype=torch.float32)
        return ([[cond, {}]],)


from .tiny_svd import TinySVDCheckpointLoader  # noqa: E402 (after the Wan node it sits beside)

NODE_CLASS_MAPPINGS = {"TinyWanTextConditioning": TinyWanTextConditioning,
                       "TinySVDCheckpointLoader": TinySVDCheckpointLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"TinyWanTextConditioning": "Tiny Wan text conditioning (test only)",
                              "TinySVDCheckpointLoader": "Tiny SVD checkpoint loader (test only)"}
