"""Saving and loading a stream's state (streamingt2v_core.stream_state), so one chunk (or N) per prompt,
on any server, continues a video bit for bit: Load State -> CAM Extend -> Save State."""
from __future__ import annotations

import logging
import os

import folder_paths
from comfy_api.latest import io, ui

from ..comfy_bridge.models import streamingt2v_path
from ..streamingt2v_core.common.dtypes import dtype_name
from .types import (Anchor, Sampling, Stream, StreamingSVDCAM, StreamingT2VModel, StreamState, SVDSampling,
                    frames_to_image, image_to_frames)

log = logging.getLogger("StreamingT2V")

FAMILY = "streamingt2v"
SVD_FAMILY = "streamingsvd"
SUFFIX = ".safetensors"
DEFAULT_PREFIX = "stream_state/streamingt2v"
STATE_TOOLTIP = ("A state file SaveStreamState wrote: a name in the input folder (e.g. uploaded there), or "
                 "'name [output]' for one in the output folder, as SaveStreamState's state_name gives it.")


def model_identity_of(model):
    """The identity (file, size, content hash, dtype) of a loaded StreamingT2V model; None when its file is
    no longer in models/streamingt2v (the stream then cannot be saved: nothing would name its weights)."""
    from ..streamingt2v_core.stream_state import model_identity

    path = streamingt2v_path(model.name)
    return None if path is None else model_identity(path, model.name, dtype_name(model.module.dtype))


def state_path_problem(name) -> str | None:
    """Why `name` is not a state file in the input or output folder (None: it is)."""
    if name is None:  # linked: checked again in execute
        return None
    if not isinstance(name, str) or not name.strip():
        return f"state: no file named; {STATE_TOOLTIP}"
    rel, base = folder_paths.annotated_filepath(name.strip())
    base = os.path.abspath(base or folder_paths.get_input_directory())
    path = os.path.abspath(os.path.join(base, rel))
    if os.path.commonpath((base, path)) != base:
        return f"state: '{name}' leaves its folder ({base}); give a name inside the input or output folder"
    if not path.endswith(SUFFIX):
        return f"state: '{name}' is not a {SUFFIX} file; {STATE_TOOLTIP}"
    if not os.path.isfile(path):
        return f"state: '{name}' does not exist in {base}; {STATE_TOOLTIP}"
    return None


def state_path(name: str) -> str:
    rel, base = folder_paths.annotated_filepath(name.strip())
    return os.path.abspath(os.path.join(base or folder_paths.get_input_directory(), rel))


def prefix_problem(prefix) -> str | None:
    if prefix is None:
        return None
    p = str(prefix).replace("\\", "/")
    if not p.strip() or p.startswith("/") or ".." in p.split("/") or (len(p) > 1 and p[1] == ":"):
        return (f"filename_prefix: '{prefix}' must be a relative name inside the output folder, e.g. "
                f"'{DEFAULT_PREFIX}'")
    return None


def saved_frames(stream: StreamState, include_frames: bool):
    """Every frame so far as (N, 3, H, W) in [0, 1] for a state saved with its frames, else None."""
    if not include_frames:
        return None
    if stream.frames_before:
        raise ValueError(f"include_frames: the stream was loaded without its first {stream.frames_before} "
                         "frames, so they cannot be saved; turn include_frames off")
    return image_to_frames(stream.frames()).contiguous()


def saved_from_stream(stream: StreamState, include_frames: bool):
    """A StreamState as the core's SavedStream (its family by the stream's sampling record)."""
    from ..streamingt2v_core.stream_state import SavedStream

    s, anchor = stream.sampling, stream.anchor
    frames = saved_frames(stream, include_frames)
    if isinstance(s, SVDSampling):
        return SavedStream(
            family=SVD_FAMILY, model=s.model, seed=s.seed, generator_state=s.generator_state,
            num_chunks=s.chunks_done, num_frames=stream.num_frames,
            tensors={"cond_frames": s.tail, "images": s.images, "embeddings": s.embeddings},
            settings={"image_source": f"{int(s.images.shape[0])} SVD image(s)"}, frames=frames)
    return SavedStream(
        family=FAMILY, model=s.model, seed=s.seed, generator_state=s.generator_state,
        num_chunks=len(stream.prompts), num_frames=stream.num_frames,
        tensors={"cond_frames": stream.tail(s.cond_frames).float().contiguous(),
                 "anchor_tokens": anchor.tokens.float().contiguous(),
                 "anchor_image": image_to_frames(anchor.image).contiguous()},
        settings={"prompts": list(stream.prompts), "negative_prompt": s.negative_prompt, "steps": s.steps,
                  "guidance": s.guidance, "eta": s.eta, "anchor_source": anchor.source},
        frames=frames)


def svd_stream_from_saved(saved) -> StreamState:
    """A SavedStream (streamingsvd family) as the stream StreamingSVDExtend continues: exact control frames,
    images, embeddings and generator; the frames it holds are the saved ones, else the control frames."""
    t = saved.tensors
    sampling = SVDSampling(seed=saved.seed, generator_state=saved.generator_state, tail=t["cond_frames"],
                           images=t["images"], embeddings=t["embeddings"], chunks_done=saved.num_chunks,
                           model=saved.model)
    held = frames_to_image(((t["cond_frames"] + 1) / 2).clamp(0, 1) if saved.frames is None else saved.frames)
    chunks_so_far = 1 + saved.num_chunks  # the input video, then each StreamingSVD chunk
    return StreamState(chunks=(held,), prompts=("",) * chunks_so_far, sampling=sampling,
                       frames_before=saved.num_frames - int(held.shape[0]), new_from=saved.num_frames)


def stream_from_saved(saved) -> StreamState:
    """A SavedStream (streamingt2v family) as the stream CAMExtendChunk continues."""
    t, st = saved.tensors, saved.settings
    cond = t["cond_frames"]
    sampling = Sampling(seed=saved.seed, generator_state=saved.generator_state, negative_prompt=st["negative_prompt"],
                        steps=st["steps"], guidance=float(st["guidance"]), eta=float(st["eta"]),
                        cond_frames=int(cond.shape[0]), model=saved.model)
    anchor = Anchor(tokens=t["anchor_tokens"], image=frames_to_image(t["anchor_image"]), source=st["anchor_source"])
    held = frames_to_image(cond if saved.frames is None else saved.frames)
    return StreamState(chunks=(held,), prompts=tuple(st["prompts"]), anchor=anchor, sampling=sampling,
                       frames_before=saved.num_frames - int(held.shape[0]), new_from=saved.num_frames)


LOAD_NODES_BY_FAMILY = {FAMILY: "Load Stream State (StreamingT2V)", SVD_FAMILY: "Load Stream State (StreamingSVD)"}


def read_family_state(state: str, family: str):
    """The SavedStream of the state file `state` (checked header first), refused unless it is `family`'s."""
    from ..streamingt2v_core.stream_state import StateError, read_state

    problem = LoadStreamState.file_problem(state)
    if problem:
        raise ValueError(problem)
    try:
        saved = read_state(state_path(state))
    except StateError as e:
        raise ValueError(f"state: {e}") from None
    if saved.family != family:
        raise ValueError(f"state: a {saved.family} state; this node continues {family} streams: load it with "
                         f"{LOAD_NODES_BY_FAMILY.get(saved.family, 'its own node')}")
    return saved


class SaveStreamState(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SaveStreamState",
            display_name="Save Stream State (StreamingT2V)",
            category="StreamingT2V/stream",
            description="Saves what continuing the stream needs (the CAM's conditioning frames, the APM anchor, the "
                        "prompts and settings, the generator after the last chunk, the model's identity) as one "
                        ".safetensors file in the output folder; LoadStreamState continues it bit for bit, on this "
                        "or any server. new_frames: the frames added since the stream was loaded (all, for a "
                        "stream made in this prompt), to save as a segment.",
            inputs=[
                Stream.Input("stream", tooltip="From CAMExtendChunk (the state needs its generator and model)."),
                io.String.Input("filename_prefix", default=DEFAULT_PREFIX,
                                tooltip="Inside the output folder; a counter is appended."),
                io.Boolean.Input("include_frames", default=False,
                                 tooltip="Also store every frame so far (float32: large). Off: the state stays "
                                         "small (the last frames the CAM reads)."),
            ],
            outputs=[io.Image.Output("new_frames", display_name="new_frames"),
                     io.String.Output("state_name", display_name="state_name")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, filename_prefix=DEFAULT_PREFIX, **_inputs):
        return prefix_problem(filename_prefix) or True

    @classmethod
    def execute(cls, stream: StreamState, filename_prefix=DEFAULT_PREFIX, include_frames=False) -> io.NodeOutput:
        from ..streamingt2v_core.stream_state import write_state

        problem = prefix_problem(filename_prefix)
        if problem:
            raise ValueError(problem)
        svd = isinstance(stream.sampling, SVDSampling)
        if stream.sampling is None or (stream.anchor is None and not svd):
            raise ValueError("stream: no CAM chunk yet, so there is no generator or anchor to save; pass the stream "
                             "through CAMExtendChunk (or StreamingSVD Extend) before SaveStreamState")
        if stream.sampling.model is None:
            folder = "models/streamingsvd or models/checkpoints" if svd else "models/streamingt2v"
            raise ValueError(f"stream: its model file left {folder} after loading, so the state could not name its "
                             "weights; put the file back and run the extend node again")
        saved = saved_from_stream(stream, include_frames)
        out_dir = folder_paths.get_output_directory()
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, out_dir)
        os.makedirs(folder, exist_ok=True)
        file = f"{filename}_{counter:05}_{SUFFIX}"
        size = write_state(os.path.join(folder, file), saved)
        rel = os.path.join(subfolder, file).replace("\\", "/")
        name = f"{rel} [output]"
        info = (f"saved {name}: {size} bytes, {saved.num_chunks} chunks, {saved.num_frames} frames"
                + (" (with the frames)" if include_frames else ""))
        log.info("StreamingT2V: %s", info)
        new = stream.new_frames()
        return io.NodeOutput(new, name, ui={"text": [info], "stream_states": [
            {"filename": file, "subfolder": subfolder, "type": "output", "size": size,
             "chunks": saved.num_chunks, "frames": saved.num_frames, "new_frames": int(new.shape[0])}]})


class LoadStreamState(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoadStreamState",
            display_name="Load Stream State (StreamingT2V)",
            category="StreamingT2V/stream",
            description="Loads a state SaveStreamState wrote, to continue the stream with CAMExtendChunk "
                        "(continue_generator on: the frames equal one uninterrupted run). Refuses a state made with "
                        "other weights or another dtype, and any file that is not a state (only safetensors is read; "
                        "nothing is unpickled).",
            inputs=[
                # lazy: the file is checked before the model is requested (loaded)
                StreamingT2VModel.Input("model", lazy=True,
                                        tooltip="The model the state was made with (its identity is checked)."),
                io.String.Input("state", default="", tooltip=STATE_TOOLTIP),
            ],
            outputs=[Stream.Output("stream", display_name="stream"),
                     io.String.Output("info", display_name="info")],
        )

    @classmethod
    def validate_inputs(cls, state=None, **_inputs):
        return state_path_problem(state) or True

    @staticmethod
    def file_problem(state) -> str | None:
        from ..streamingt2v_core.stream_state import StateError, read_header

        problem = state_path_problem(state)
        if problem:
            return problem
        try:
            read_header(state_path(state))
        except StateError as e:
            return f"state: {e}"
        return None

    @classmethod
    def check_lazy_status(cls, model=None, state=None):
        # a missing or broken file fails in execute without the model: the loader is never run for it
        if model is None and state is not None and cls.file_problem(state) is None:
            return ["model"]
        return []

    @classmethod
    def execute(cls, model, state) -> io.NodeOutput:
        from ..streamingt2v_core.stream_state import identity_problem

        saved = read_family_state(state, FAMILY)
        current = model_identity_of(model)
        if current is None:
            raise ValueError(f"model: '{model.name}' is no longer in models/streamingt2v, so its weights cannot be "
                             "checked against the state's; put the file back")
        problem = identity_problem(saved.model, current)
        if problem:
            raise ValueError(f"model: {problem}")
        stream = stream_from_saved(saved)
        info = (f"loaded {state.strip()}: {saved.num_chunks} chunks, {saved.num_frames} frames"
                + ("" if saved.frames is None else " (with the frames)")
                + f"; model {saved.model.describe()}")
        log.info("StreamingT2V: %s", info)
        return io.NodeOutput(stream, info, ui=ui.PreviewText(info))


class LoadStreamingSVDState(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LoadStreamingSVDState",
            display_name="Load Stream State (StreamingSVD)",
            category="StreamingT2V/stream",
            description="Loads a StreamingSVD state SaveStreamState wrote, to continue it with StreamingSVD Extend "
                        "(its `stream` input): the frames equal one uninterrupted run. Refuses a state made with "
                        "another CAM file or another dtype, and any file that is not a state.",
            inputs=[
                # lazy: the file is checked before the weights are requested (loaded)
                StreamingSVDCAM.Input("cam", lazy=True, tooltip="The CAM the state was made with (checked)."),
                io.Model.Input("model", lazy=True, tooltip="The SVD MODEL (its dtype is checked)."),
                io.String.Input("state", default="", tooltip=STATE_TOOLTIP),
            ],
            outputs=[Stream.Output("stream", display_name="stream"),
                     io.String.Output("info", display_name="info")],
        )

    @classmethod
    def validate_inputs(cls, state=None, **_inputs):
        return state_path_problem(state) or True

    @classmethod
    def check_lazy_status(cls, cam=None, model=None, state=None):
        if state is None or LoadStreamState.file_problem(state) is not None:
            return []  # execute reports it; no loader runs for it
        return [name for name, value in (("cam", cam), ("model", model)) if value is None]

    @classmethod
    def execute(cls, cam, model, state) -> io.NodeOutput:
        from ..streamingt2v_core.stream_state import identity_problem
        from .svd import svd_identity

        saved = read_family_state(state, SVD_FAMILY)
        current = svd_identity(cam, model)
        if current is None:
            raise ValueError(f"cam: '{cam.name}' is no longer in its model folder, so its weights cannot be checked "
                             "against the state's; put the file back")
        problem = identity_problem(saved.model, current)
        if problem:
            raise ValueError(f"cam / model: {problem}")
        stream = svd_stream_from_saved(saved)
        info = (f"loaded {state.strip()}: {saved.num_chunks} StreamingSVD chunks, {saved.num_frames} frames"
                + ("" if saved.frames is None else " (with the frames)") + f"; weights {saved.model.describe()}")
        log.info("StreamingSVD: %s", info)
        return io.NodeOutput(stream, info, ui=ui.PreviewText(info))


STATE_NODES = [SaveStreamState, LoadStreamState, LoadStreamingSVDState]
