"""Drive a long StreamingT2V or StreamingSVD video through one or more ComfyUI servers, one step (N chunks) per prompt.

    python tools/stream_client.py --server http://127.0.0.1:8188 [--server URL ...] \\
        --prompt "A cat running on the street" [--prompt "…next chunks…"] --chunks 149 --out video.mp4
    python tools/stream_client.py --family streamingsvd --server URL [--server URL ...] \\
        --image input.png --chunks 5 --out video.mp4

Each step is workflows/stream_step_api.json (Load Stream State -> CAM Extend -> Save Stream State, the new
frames saved as PNGs) queued with stock `POST /prompt`; step 0 starts the stream from text (or from
--init-state). A StreamingSVD video's steps are workflows/svd_stream_step_api.json, and its step 0 is
svd_long_video's first chunk from --image (core's SVD nodes) with the step's chunks. The client keeps the last good state and every finished segment in --work: when a server
dies or answers with an error, the step runs again on another server from that state (uploaded to its
input folder), and the frames equal one uninterrupted run. A run stopped by Ctrl-C (or a crash of the
client) continues from --work when started again with the same arguments. At the end the segments are
encoded into one mp4 with PyAV, one frame in memory at a time.

Standard library plus websocket-client and PyAV (both ComfyUI requirements). Nothing here runs as a
service: any queue or serverless worker that forwards `POST /prompt` can be a --server.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
STEP_WORKFLOW = REPO / "workflows" / "stream_step_api.json"
SVD_STEP_WORKFLOW = REPO / "workflows" / "svd_stream_step_api.json"
SVD_FIRST_WORKFLOW = REPO / "workflows" / "svd_long_video_api.json"
FINISHED = ("execution_success", "execution_error", "execution_interrupted")
X264 = {"crf": "18", "x264-params": "mbtree=0:rc-lookahead=0"}
NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, socket.timeout, OSError)


class ServerDied(Exception):
    """The server stopped answering (crashed, killed, pre-empted)."""


class StepFailed(Exception):
    """The server answered, but the step did not finish (an error in the graph or the node)."""


@dataclass(kw_only=True)
class Stepping:
    """What a video's steps are, whatever the model family: chunks after the first chunk, grouped into
    steps of `chunks_per_step` (one prompt each), one seed for the whole stream."""
    chunks: int  # chunks after the first chunk
    chunks_per_step: int = 1
    seed: int = 33
    init_state: Optional[str] = None  # start from this state file (step 0 then is a plain step)
    step_timeout: float = 3600.0

    def problems(self) -> list:
        return [] if self.chunks >= 1 and self.chunks_per_step >= 1 else [
            "--chunks and --chunks-per-step must be at least 1"]

    def num_steps(self) -> int:
        return -(-self.chunks // self.chunks_per_step)

    def step_chunks(self, k: int) -> range:
        return range(k * self.chunks_per_step, min((k + 1) * self.chunks_per_step, self.chunks))


@dataclass(kw_only=True)
class Job(Stepping):
    """A StreamingT2V video: a prompt per chunk, 8 new frames per CAM chunk."""
    prompts: list  # the prompt of each chunk: i for chunk i, the last carries on
    negative_prompt: str = ""
    steps: int = 50
    guidance: float = 7.5
    eta: float = 1.0
    model: str = "streaming_t2v.safetensors"
    dtype: str = "auto"
    memory: str = "auto"
    new_frames_per_chunk: int = 8  # the model's (8 for the official one)
    t2v_unet: str = "text-to-video-ms-1.7b/unet/diffusion_pytorch_model.safetensors"
    init_steps: int = 50
    init_guidance: float = 9.0
    fps: float = 8.0

    def problems(self) -> list:
        out = super().problems()
        if not self.prompts:
            out.append("--prompt: give at least one prompt")
        for p in self.prompts:
            if not p.strip() or "\n" in p:
                out.append(f"--prompt: {p!r}: each prompt is one non-empty line (one prompt per chunk)")
        return out

    def chunk_prompt(self, i: int) -> str:
        return self.prompts[min(i, len(self.prompts) - 1)]

    def graph(self, run_id: str, k: int, state_name: Optional[str], upload: Callable) -> dict:
        """The API prompt of step k (`upload(path)` puts a file of this job in the server's input folder)."""
        return step_graph(json.loads(STEP_WORKFLOW.read_text()), self, run_id, k, state_name)


@dataclass(kw_only=True)
class SVDJob(Stepping):
    """A StreamingSVD video: an image, then CAM chunks of 25 frames that keep 18 new frames each (no text)."""
    image: Optional[str] = None  # the input image on this machine (step 0 without --init-state)
    steps: int = 30  # per CAM chunk (StreamingSVD Sigmas)
    model: str = "StreamingSVD/model.safetensors"  # SVD-XT with the CAM: models/checkpoints
    cam: str = "StreamingSVD/model.safetensors"  # the CAM: the same file or a CAM file in models/streamingsvd
    new_frames_per_chunk: int = 18
    init_steps: int = 25  # the first chunk (core's KSampler, as svd_long_video)
    init_guidance: float = 3.0
    width: int = 1024
    height: int = 576
    fps: float = 12.0  # the official plays 100 raw frames interpolated to 200 at 24 fps

    def problems(self) -> list:
        out = super().problems()
        if self.init_state is None and (self.image is None or not Path(self.image).is_file()):
            out.append(f"--image: {self.image!r} is not a file: give the input image (or --init-state)")
        if self.width % 64 or self.height % 64:
            out.append(f"--width/--height: {self.width}x{self.height}: both must be multiples of 64 (1024x576 "
                       "is the official size)")
        return out

    def graph(self, run_id: str, k: int, state_name: Optional[str], upload: Callable) -> dict:
        if state_name is not None:
            g = _plain(json.loads(SVD_STEP_WORKFLOW.read_text()))
            g[find_node(g, "LoadStreamingSVDState")]["inputs"]["state"] = state_name
        else:  # step 0: svd_long_video up to its extend node, the image uploaded
            g = _plain(json.loads(SVD_FIRST_WORKFLOW.read_text()))
            for drop in ("ChunkAssembler", "SaveVideo"):
                del g[find_node(g, drop)]
            g[find_node(g, "LoadImage")]["inputs"]["image"] = upload(Path(self.image))
            g[find_node(g, "SVD_img2vid_Conditioning")]["inputs"].update(width=self.width, height=self.height)
            g[find_node(g, "KSampler")]["inputs"].update(seed=self.seed, steps=self.init_steps,
                                                         cfg=self.init_guidance)
            extend = find_node(g, "StreamingSVDExtend")
            g["save_state"] = {"class_type": "SaveStreamState", "inputs": {"stream": [extend, 0]}}
            g["save_frames"] = {"class_type": "SaveImage", "inputs": {"images": ["save_state", 0]}}
        g[find_node(g, "ImageOnlyCheckpointLoader")]["inputs"]["ckpt_name"] = self.model
        g[find_node(g, "LoadStreamingSVDCAM")]["inputs"]["cam_name"] = self.cam
        g[find_node(g, "StreamingSVDSigmas")]["inputs"]["steps"] = self.steps
        g[find_node(g, "StreamingSVDExtend")]["inputs"].update(
            frames_to_add=len(self.step_chunks(k)) * self.new_frames_per_chunk, seed=self.seed)
        g[find_node(g, "SaveStreamState")]["inputs"].update(filename_prefix=f"stream_states/{run_id}/step_{k:05}",
                                                            include_frames=False)
        g[find_node(g, "SaveImage")]["inputs"]["filename_prefix"] = f"stream_segments/{run_id}/seg_{k:05}"
        return g


def _plain(template: dict) -> dict:
    """An API workflow without its `_meta` titles (a prompt needs only class types and inputs)."""
    return {i: {kk: vv for kk, vv in n.items() if kk != "_meta"} for i, n in copy.deepcopy(template).items()}


class Server:
    """One ComfyUI over HTTP (urllib) and its websocket (websocket-client)."""

    def __init__(self, url: str, client_id: str):
        self.url = url.rstrip("/")
        self.client_id = client_id
        self.alive = True

    def _open(self, req, timeout: float):
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except NETWORK_ERRORS as e:
            raise ServerDied(f"{self.url}: {e}") from None

    def get(self, path: str, timeout: float = 30.0) -> bytes:
        status, raw = self._open(urllib.request.Request(self.url + path), timeout)
        if status != 200:
            raise StepFailed(f"{self.url}: GET {path}: HTTP {status}: {raw[:500]!r}")
        return raw

    def post_json(self, path: str, data: dict, timeout: float = 60.0) -> tuple:
        req = urllib.request.Request(self.url + path, data=json.dumps(data).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        status, raw = self._open(req, timeout)
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, {"raw": raw.decode(errors="replace")}

    def is_free(self) -> bool:
        q = json.loads(self.get("/queue", timeout=5))
        return not q.get("queue_running") and not q.get("queue_pending")

    def upload_input(self, data: bytes, filename: str, subfolder: str) -> str:
        """Puts a file in the server's input folder (ComfyUI's /upload/image takes any file); its input name."""
        boundary = uuid.uuid4().hex
        parts = []
        for name, value in (("type", "input"), ("subfolder", subfolder), ("overwrite", "true")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                     f'Content-Type: application/octet-stream\r\n\r\n'.encode() + data + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        req = urllib.request.Request(self.url + "/upload/image", data=b"".join(parts), method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        status, raw = self._open(req, 120)
        if status != 200:
            raise StepFailed(f"{self.url}: upload of {filename}: HTTP {status}: {raw[:300]!r}")
        answer = json.loads(raw)
        return "/".join(p for p in (answer.get("subfolder"), answer["name"]) if p)

    def view(self, f: dict) -> bytes:
        q = urllib.parse.urlencode({"filename": f["filename"], "subfolder": f.get("subfolder", ""),
                                    "type": f.get("type", "output")})
        return self.get("/view?" + q, timeout=120)

    def run(self, graph: dict, on_progress: Callable, timeout: float) -> dict:
        """Queues `graph` and follows it to the end; its /history entry. ServerDied when the server goes away,
        StepFailed when it reports an error."""
        import websocket

        ws_url = self.url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        try:
            ws = websocket.create_connection(f"{ws_url}/ws?clientId={urllib.parse.quote(self.client_id)}", timeout=10)
        except (websocket.WebSocketException, *NETWORK_ERRORS) as e:
            raise ServerDied(f"{self.url}: websocket: {e}") from None
        try:
            status, body = self.post_json("/prompt", {"prompt": graph, "client_id": self.client_id})
            if status != 200 or body.get("node_errors"):
                raise StepFailed(f"{self.url}: the prompt was refused (HTTP {status}): {json.dumps(body)[:2000]}")
            pid = body["prompt_id"]
            deadline, next_poll, finished = time.monotonic() + timeout, 0.0, False
            ws.settimeout(1.0)
            while True:
                try:
                    msg = ws.recv()
                except websocket.WebSocketTimeoutException:
                    msg = None
                except (websocket.WebSocketException, *NETWORK_ERRORS):
                    self.get("/system_stats", timeout=5)  # ServerDied when it is gone
                    raise StepFailed(f"{self.url}: the websocket closed while the server still answers") from None
                if isinstance(msg, str):
                    m = json.loads(msg)
                    d = m.get("data") or {}
                    if d.get("prompt_id") == pid and m.get("type") == "progress":
                        on_progress(self, d.get("value", 0), d.get("max", 0))
                    if d.get("prompt_id") == pid and m.get("type") in FINISHED:
                        finished, next_poll = True, 0.0  # the record follows within moments: read it soon
                        ws.settimeout(0.05)
                if time.monotonic() >= next_poll:  # the history is the record; the socket is for progress
                    next_poll = time.monotonic() + (0.05 if finished else 1.0)
                    entry = json.loads(self.get(f"/history/{pid}", timeout=10)).get(pid)
                    done = (entry or {}).get("status", {}).get("status_str")
                    if done == "success":
                        return entry
                    if done == "error":
                        raise StepFailed(f"{self.url}: {describe_error(entry)}")
                if time.monotonic() > deadline:
                    raise StepFailed(f"{self.url}: the step did not finish within {timeout:.0f} s")
        finally:
            ws.close()


def describe_error(entry: dict) -> str:
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{data.get('node_type')}: {data.get('exception_type')}: {data.get('exception_message')}"
    return json.dumps(entry.get("status", {}))[:1000]


def find_node(graph: dict, class_type: str) -> str:
    ids = [k for k, v in graph.items() if v.get("class_type") == class_type]
    if len(ids) != 1:
        raise ValueError(f"the step workflow needs exactly one {class_type} node, it has {len(ids)}")
    return ids[0]


def step_graph(template: dict, job: Job, run_id: str, k: int, state_name: Optional[str]) -> dict:
    """The API prompt of step k: its chunks' prompts and the job's settings in the step workflow; with
    `state_name` None (step 0 of a text start) the Load State node becomes the text init."""
    g = _plain(template)
    model, load, cam = find_node(g, "LoadStreamingT2V"), find_node(g, "LoadStreamState"), find_node(g, "CAMExtendChunk")
    save, seg = find_node(g, "SaveStreamState"), find_node(g, "SaveImage")
    g[model]["inputs"].update(ckpt_name=job.model, dtype=job.dtype)
    chunks = job.step_chunks(k)
    g[cam]["inputs"].update(prompt="\n".join(job.chunk_prompt(i) for i in chunks), per_line_prompts=True,
                            frames_to_add=len(chunks) * job.new_frames_per_chunk, negative_prompt=job.negative_prompt,
                            steps=job.steps, guidance=job.guidance, eta=job.eta, seed=job.seed, memory=job.memory,
                            continue_generator=True)
    g[save]["inputs"].update(filename_prefix=f"stream_states/{run_id}/step_{k:05}", include_frames=False)
    g[seg]["inputs"]["filename_prefix"] = f"stream_segments/{run_id}/seg_{k:05}"
    if state_name is not None:
        g[load]["inputs"]["state"] = state_name
    else:
        unet = f"{load}_t2v"
        g[unet] = {"class_type": "LoadModelScopeT2V", "inputs": {"unet_name": job.t2v_unet, "dtype": job.dtype}}
        g[load] = {"class_type": "StreamingT2VInitFromText", "inputs": {
            "model": [model, 0], "t2v_unet": [unet, 0], "prompt": job.chunk_prompt(0), "negative_prompt": "",
            "steps": job.init_steps, "guidance": job.init_guidance, "seed": job.seed, "width": 0, "height": 0}}
    return g


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass
class StreamRun:
    """A video in `work`: state_K.safetensors after each finished step K, its frames in seg_K/ (a segment is
    renamed into place only once all its frames are there, and its state only after it)."""
    job: Job
    urls: list
    work: Path
    on_progress: Callable = field(default=lambda step, server, value, total: None)
    log: Callable = field(default=lambda msg: print(msg, flush=True))

    def __post_init__(self):
        problems = self.job.problems()
        if problems:
            raise ValueError("; ".join(problems))
        if not self.urls:
            raise ValueError("--server: give at least one ComfyUI URL")
        self.work = Path(self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        manifest = self.work / "run.json"
        if manifest.exists():
            saved = json.loads(manifest.read_text())
            if saved["job"] != json.loads(json.dumps(asdict(self.job))):
                raise ValueError(f"{manifest}: this work folder belongs to a run with other settings; give another "
                                 "--work or the same arguments")
            self.run_id = saved["run_id"]
        else:
            self.run_id = uuid.uuid4().hex[:12]
            _atomic_write(manifest, json.dumps({"run_id": self.run_id, "job": asdict(self.job)}, indent=1).encode())
        client_id = uuid.uuid4().hex
        self.servers = [Server(u, client_id) for u in self.urls]
        self._next = 0
        self.failures: list = []  # (step, server url, reason) of every try that did not finish

    def state_path(self, k: int) -> Path:
        return self.work / f"state_{k:05}.safetensors"

    def segment_dir(self, k: int) -> Path:
        return self.work / f"seg_{k:05}"

    def done_steps(self) -> int:
        """Steps finished in an earlier run of this work folder (each with its state and segment)."""
        k = 0
        while self.state_path(k).is_file() and self.segment_dir(k).is_dir():
            k += 1
        return k

    def pick_server(self, exclude: set) -> Server:
        """The next live server in turn that has nothing queued (else the next live one)."""
        n = len(self.servers)
        order = [self.servers[(self._next + i) % n] for i in range(n)]
        live = [s for s in order if s.alive and s.url not in exclude]
        if not live:
            raise RuntimeError("no server left to run the step: " + "; ".join(
                f"step {k} on {u}: {why}" for k, u, why in self.failures[-2 * n:]))
        for s in live:
            try:
                if s.is_free():
                    break
            except ServerDied:
                s.alive = False
        else:
            s = next((s for s in live if s.alive), None)
            if s is None:
                return self.pick_server(exclude)
        self._next = (self.servers.index(s) + 1) % n
        return s

    def run_step(self, k: int) -> None:
        tried: set = set()
        while True:
            server = self.pick_server(tried)
            try:
                self._run_step_on(server, k)
                return
            except ServerDied as e:
                server.alive = False
                self.failures.append((k, server.url, f"died: {e}"))
                self.log(f"step {k}: {server.url} died ({e}); resuming from the last state on another server")
            except StepFailed as e:
                tried.add(server.url)  # a server that errs may work again on the next step
                self.failures.append((k, server.url, str(e)))
                self.log(f"step {k}: failed on {server.url}: {e}")

    def _run_step_on(self, server: Server, k: int) -> None:
        if k > 0 or self.job.init_state:
            source = self.state_path(k - 1) if k > 0 else Path(self.job.init_state)
            state_name = server.upload_input(source.read_bytes(), f"step_{k - 1:05}.safetensors" if k else source.name,
                                             f"stream_states/{self.run_id}")
        else:
            state_name = None

        def upload(path: Path) -> str:
            return server.upload_input(path.read_bytes(), path.name, f"stream_inputs/{self.run_id}")

        graph = self.job.graph(self.run_id, k, state_name, upload)
        self.log(f"step {k}/{self.job.num_steps()}: chunks {list(self.job.step_chunks(k))} on {server.url}")
        entry = server.run(graph, lambda s, v, m: self.on_progress(k, s, v, m), self.job.step_timeout)
        save, seg = find_node(graph, "SaveStreamState"), find_node(graph, "SaveImage")
        (state_file,) = entry["outputs"][save]["stream_states"]
        images = entry["outputs"][seg]["images"]
        if len(images) != state_file["new_frames"]:
            raise StepFailed(f"{server.url}: {len(images)} segment frames listed, the state says "
                             f"{state_file['new_frames']}")
        final, tmp = self.segment_dir(k), self.work / f".seg_{k:05}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for i, f in enumerate(images):
            (tmp / f"{i:06}.png").write_bytes(server.view(f))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _atomic_write(self.state_path(k), server.view(state_file))  # the step counts as done from here

    def run(self, out: Path) -> Path:
        start = self.done_steps()
        if start:
            self.log(f"continuing {self.work}: {start} step(s) already done")
        for k in range(start, self.job.num_steps()):
            self.run_step(k)
        return concatenate([self.segment_dir(k) for k in range(self.job.num_steps())], Path(out), self.job.fps)


def concatenate(segments: list, out: Path, fps: float) -> Path:
    """The segments' PNG frames, in order, as one H.264 mp4 (written under a temporary name, then renamed):
    one frame in memory at a time."""
    from fractions import Fraction

    import av
    import numpy as np
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.partial{out.suffix}")
    try:
        with av.open(str(tmp), mode="w") as c:
            stream, count = None, 0
            for seg in segments:
                for png in sorted(Path(seg).glob("*.png")):
                    with Image.open(png) as im:
                        frame = np.asarray(im.convert("RGB"))
                    if stream is None:
                        # x264's lookahead (macroblock tree) made other frames from the same input from run to
                        # run here; without it the same segments give the same video whichever servers made them
                        stream = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001), options=X264)
                        stream.height, stream.width = frame.shape[:2]
                        stream.pix_fmt = "yuv420p"
                    video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
                    video_frame.pts = count
                    count += 1
                    for packet in stream.encode(video_frame):
                        c.mux(packet)
            if stream is None:
                raise ValueError(f"no frames in the segments {segments}")
            for packet in stream.encode():
                c.mux(packet)
        os.replace(tmp, out)
    except BaseException:  # anything, even Ctrl-C: no half-written video under the final name
        tmp.unlink(missing_ok=True)
        raise
    return out


FAMILIES = {"streamingt2v": Job, "streamingsvd": SVDJob}


def main(argv=None) -> int:
    from dataclasses import fields

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", action="append", required=True, help="A ComfyUI URL (repeat for more servers).")
    p.add_argument("--family", choices=sorted(FAMILIES), default="streamingt2v", help="default: streamingt2v")
    p.add_argument("--prompt", action="append", help="StreamingT2V: the prompt of the next chunk (repeat: one per "
                   "chunk, the last carries on).")
    p.add_argument("--chunks", type=int, required=True, help="CAM chunks after the first chunk (StreamingT2V: 8 new "
                   "frames each, StreamingSVD: 18).")
    p.add_argument("--out", required=True, help="The final mp4.")
    p.add_argument("--work", help="Where states and segments are kept (default: OUT without .mp4 + '_work').")
    seen = {"chunks", "prompts"}
    for cls in FAMILIES.values():  # every other field of either job, default None: the family's own default
        for f in fields(cls):
            if f.name in seen:
                continue
            seen.add(f.name)
            p.add_argument("--" + f.name.replace("_", "-"), type={"int": int, "float": float}.get(f.type, str),
                           help=" / ".join(f"{name}: {getattr(c, f.name)}" for name, c in FAMILIES.items()
                                           if f.name in c.__dataclass_fields__ and
                                           not callable(getattr(c, f.name, None))))
    a = p.parse_args(argv)
    cls = FAMILIES[a.family]
    given = {f.name: getattr(a, f.name) for f in fields(cls) if f.name not in ("chunks", "prompts")
             and getattr(a, f.name) is not None}
    if cls is Job:
        if not a.prompt:
            p.error("--prompt: StreamingT2V needs at least one prompt")
        given["prompts"] = a.prompt
    elif a.prompt:
        p.error("--prompt: StreamingSVD has no text; give --image")
    job = cls(chunks=a.chunks, **given)
    if job.problems():
        p.error("; ".join(job.problems()))
    out = Path(a.out)
    work = Path(a.work) if a.work else out.with_name(out.stem + "_work")

    def progress(step, server, value, total):
        print(f"\r  step {step}: {value}/{total} on {server.url}   ", end="", file=sys.stderr, flush=True)

    path = StreamRun(job, a.server, work, on_progress=progress).run(out)
    print(f"\n{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
