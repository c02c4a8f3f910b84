"""Every socket type of the pack (only what ComfyUI has no type for), the values they carry, and the
limits sockets share.

Values are never mutated after a node returns them: ComfyUI caches node outputs and hands the same
object to every consumer, so a node that extends a stream builds a new one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ..streamingt2v_core.t2v.config import StreamingT2VConfig

StreamingT2VModel = io.Custom("STREAMINGT2V_MODEL")  # the stage-2 model (CAM, APM, text encoder, VAE)
ModelScopeUNet = io.Custom("STREAMINGT2V_T2V_UNET")  # the stage-1 ModelScope text-to-video UNet
APMAnchor = io.Custom("STREAMINGT2V_APM")  # the appearance anchor: APM tokens
Stream = io.Custom("STREAMINGT2V_STREAM")  # a resumable video: frames so far, chunk boundaries, anchor
RefinerModel = io.Custom("STREAMINGT2V_REFINER")  # the stage-3 enhancer (MS-Vid2Vid-XL or a diffusers T2V model)
StreamingSVDCAM = io.Custom("STREAMINGSVD_CAM")  # StreamingSVD's CAM, skip mergers and conditioner encoder

SEED_MAX = 0xFFFFFFFFFFFFFFFF
# The official model's numbers, for what is shown before any model is loaded (tooltips, lazy checks);
# a loaded model's own config decides when it runs.
OFFICIAL_CONFIG = StreamingT2VConfig()


@dataclass(frozen=True, eq=False)
class Anchor:
    """APM tokens of one anchor image, and that image (for previews and the info text)."""
    tokens: torch.Tensor  # (1, 16, D) float32, CPU
    image: torch.Tensor  # (1, H, W, 3) float32 in [0, 1], CPU (ComfyUI IMAGE layout)
    source: str  # where it came from, e.g. "frame 0 of 16"


@dataclass(frozen=True, eq=False)
class Sampling:
    """What continuing a stream bit for bit needs besides its frames and anchor: the settings of its CAM
    chunks, the generator state after the last one, and the weights that drew them. CAMExtendChunk sets
    it; a saved state carries it (streamingt2v_core.stream_state)."""
    seed: int  # the seed the generator was first seeded with
    generator_state: torch.Tensor  # torch.Generator.get_state() after the last chunk (uint8, CPU)
    negative_prompt: str
    steps: int
    guidance: float
    eta: float
    cond_frames: int  # how many frames the model's CAM reads
    model: object  # streamingt2v_core.stream_state.ModelIdentity of the weights and dtype


@dataclass(frozen=True, eq=False)
class SVDSampling:
    """A StreamingSVD stream's continuation, exact: the last chunk's control frames as sampled (not through
    8-bit or [0, 1] IMAGE values), the SVD image(s) and their CLIP embeddings, the generator after the last
    chunk, and the weights. StreamingSVDExtend sets it; a saved state carries it."""
    seed: int
    generator_state: torch.Tensor  # torch.Generator.get_state() after the last chunk (uint8, CPU)
    tail: torch.Tensor  # (7, 3, H, W) float32 in [-1, 1]: the CAM's control frames for the next chunk
    images: torch.Tensor  # (K, 3, H, W) float32 in [-1, 1]: the SVD image of each chunk (the last carries on)
    embeddings: torch.Tensor  # (K, 1, D) float32: their CLIP image embeddings
    chunks_done: int  # StreamingSVD chunks sampled so far (chunk c takes image min(c, K - 1))
    model: object  # streamingt2v_core.stream_state.ModelIdentity of the CAM file and the MODEL's dtype


@dataclass(frozen=True, eq=False)
class StreamState:
    """A video being streamed, kept as the official code joins it: chunk 0 whole, then the new frames of
    every later chunk. Each entry is an IMAGE tensor [n, H, W, 3], float32 in [0, 1], on the CPU. Extending
    shares the earlier tensors with the input state instead of copying them."""
    chunks: tuple
    prompts: tuple = ()  # the prompt of each chunk ("" for frames that came from elsewhere)
    anchor: Anchor | None = None  # the anchor the stream was extended with so far (None: frame 0)
    sampling: Sampling | SVDSampling | None = None  # how the last chunk was drawn, and the generator after it
    # A stream loaded from a state file without its frames holds only the CAM's conditioning frames: the
    # frames before chunks[0] that this value does not hold.
    frames_before: int = 0
    # Index of the first frame no segment holds yet: SaveStreamState hands on the frames from here as
    # new_frames (a loaded stream: the frames it had when saved).
    new_from: int = 0

    @property
    def num_frames(self) -> int:
        return self.frames_before + sum(int(c.shape[0]) for c in self.chunks)

    @property
    def height(self) -> int:
        return int(self.chunks[0].shape[1])

    @property
    def width(self) -> int:
        return int(self.chunks[0].shape[2])

    @property
    def boundaries(self) -> list:
        """Index of the first frame of every chunk."""
        out, n = [], self.frames_before
        for c in self.chunks:
            out.append(n)
            n += int(c.shape[0])
        return out

    def frames(self) -> torch.Tensor:
        """All frames as one IMAGE [N, H, W, 3] (a new tensor unless there is a single chunk)."""
        return self.chunks[0] if len(self.chunks) == 1 else torch.cat(self.chunks)

    def tail(self, n: int) -> torch.Tensor:
        """The last n frames as (n, 3, H, W): the CAM's conditioning frames."""
        parts, left = [], n
        for c in reversed(self.chunks):
            take = min(left, int(c.shape[0]))
            parts.append(c[c.shape[0] - take:])
            left -= take
            if left == 0:
                break
        if left:
            raise ValueError(f"the stream holds {self.num_frames - self.frames_before} frames, {n} are needed")
        return torch.cat(parts[::-1]).permute(0, 3, 1, 2)

    def frame(self, index: int) -> torch.Tensor:
        """One frame as IMAGE [1, H, W, 3] (index over the whole video; only frames this value holds)."""
        if index < self.frames_before:
            raise IndexError(f"frame {index} is not held: the stream was loaded without its first "
                             f"{self.frames_before} frames")
        for start, c in zip(self.boundaries, self.chunks):
            if index < start + c.shape[0]:
                return c[index - start:index - start + 1]
        raise IndexError(index)

    def extended(self, new_chunks, prompts, anchor: Anchor | None,
                 sampling: Sampling | SVDSampling | None = None) -> "StreamState":
        return StreamState(chunks=self.chunks + tuple(new_chunks), prompts=self.prompts + tuple(prompts),
                           anchor=anchor, sampling=sampling or self.sampling, frames_before=self.frames_before,
                           new_from=self.new_from)

    def new_frames(self) -> torch.Tensor:
        """The frames from `new_from` on, IMAGE [n, H, W, 3]: what no earlier segment holds."""
        return self.frames()[self.new_from - self.frames_before:]


def image_to_frames(image: torch.Tensor) -> torch.Tensor:
    """IMAGE [N, H, W, C] to (N, 3, H, W) float32 (alpha dropped)."""
    return image[..., :3].permute(0, 3, 1, 2).float()


def frames_to_image(frames: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) to IMAGE [N, H, W, 3] float32 on the CPU, contiguous."""
    return frames.detach().permute(0, 2, 3, 1).float().cpu().contiguous()


@dataclass(eq=False)
class SVDCamWeights:
    """What LoadStreamingSVDCAM gives: StreamingSVD's own weights, read memory-mapped, built into modules for
    an SVD MODEL when a node first needs them (comfy_bridge.svd_patch.build_modules)."""
    parts: object  # streamingt2v_core.svd.weights.StreamingSVDParts
    name: str  # the file's name in its model folder
