"""ChunkAssembler: a stream to frames and a VIDEO, joined as the official code joins chunks."""
from __future__ import annotations

from fractions import Fraction

from comfy_api.latest import InputImpl, Types, io

from .types import Stream, StreamState


class ChunkAssembler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ChunkAssembler",
            display_name="Chunk Assembler (StreamingT2V)",
            category="StreamingT2V/video",
            description="Joins a stream as the official code does: chunk 0 whole, then the new frames of every "
                        "later chunk (8 for StreamingT2V, 18 for StreamingSVD). Outputs the frames (IMAGE), the fps "
                        "and a VIDEO for Save Video.",
            inputs=[
                Stream.Input("stream"),
                io.Float.Input("fps", default=8.0, min=0.01, max=1000.0, step=0.01,
                               tooltip="Frame rate of the VIDEO (the official videos are 8 fps)."),
            ],
            outputs=[io.Image.Output("images", display_name="images"),
                     io.Float.Output("frame_rate", display_name="fps"),
                     io.Video.Output("video", display_name="video")],
        )

    @classmethod
    def execute(cls, stream: StreamState, fps=8.0) -> io.NodeOutput:
        images = stream.frames()
        rate = Fraction(fps).limit_denominator(1001)
        video = InputImpl.VideoFromComponents(Types.VideoComponents(images=images, frame_rate=rate))
        return io.NodeOutput(images, float(fps), video)


ASSEMBLE_NODES = [ChunkAssembler]
