"""Start a real ComfyUI headless and talk to it over HTTP and the websocket.

Used by the real-server tests (tests/comfy/conftest.py), the browser tests and the demo command
(tools/run_demo.py). Standard library plus websocket-client and PyAV (both in ComfyUI's requirements).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_NAME = "ComfyUI-StreamingT2V"
# ComfyUI logs this when a custom node folder raises at import time: every node of the pack is then gone.
IMPORT_FAILED = "(IMPORT FAILED)"


def default_comfy_dir() -> Path:
    """The ComfyUI checkout: $COMFYUI_PATH, else the one tools/bootstrap.sh unpacks into .comfyui/."""
    return Path(os.environ.get("COMFYUI_PATH") or os.environ.get("STREAMINGT2V_COMFY") or REPO_ROOT / ".comfyui")


def tiny_models_key() -> str:
    """Content hash of everything tools/make_tiny_models.py builds from (the generators, the core code, the
    oracle data): a set of tiny models made under another key is stale."""
    h = hashlib.sha256()
    files = sorted(REPO_ROOT.glob("tools/make_tiny_*.py")) + sorted(REPO_ROOT.glob("streamingt2v_core/**/*.py"))
    for sub in ("tests/data/oracle", "tests/data/refiner"):
        files += sorted(p for p in (REPO_ROOT / sub).rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(REPO_ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_extra_model_paths(yaml_path: Path, models_dir: Path, keys: list[str] | None = None) -> list[str]:
    """Map each sub-folder of `models_dir` (named by its ComfyUI folder key: streamingt2v, diffusion_models,
    streamingt2v_refiner, ...) to that key, in the extra_model_paths.yaml format ComfyUI reads before it
    imports custom nodes. Returns the keys written."""
    models_dir = Path(models_dir).resolve()
    if keys is None:
        keys = sorted(p.name for p in models_dir.iterdir() if p.is_dir()) if models_dir.is_dir() else []
    lines = ["streamingt2v_models:", f"  base_path: {json.dumps(str(models_dir))}"]
    lines += [f"  {k}: {k}" for k in keys]
    Path(yaml_path).write_text("\n".join(lines) + "\n")
    return keys


class ServerError(RuntimeError):
    pass


class ComfyServer:
    """One ComfyUI process in its own base directory, with the pack linked into its custom_nodes/.

    Nothing is written into the ComfyUI checkout: input, output, temp, user and the database all live
    under `base_dir`. Stopped by the PID we started (terminate, wait, kill)."""

    def __init__(self, base_dir: Path, comfy_dir: Path | None = None, python: str | None = None,
                 port: int | None = None, extra_model_paths: Path | None = None,
                 pack_dir: Path | None = REPO_ROOT, pack_name: str = PACK_NAME,
                 extra_args: list[str] | None = None, threads: int = 1, cpu: bool = True,
                 extra_packs: dict[str, Path] | None = None):
        self.base_dir = Path(base_dir).resolve()
        self.comfy_dir = Path(comfy_dir or default_comfy_dir()).resolve()
        self.python = python or sys.executable
        self.port = port or free_port()
        self.extra_model_paths = extra_model_paths
        self.pack_dir = Path(pack_dir).resolve() if pack_dir else None
        self.pack_name = pack_name
        # more custom node folders to link in, {folder name: path} (the tests' own nodes)
        self.extra_packs = {name: Path(p).resolve() for name, p in (extra_packs or {}).items()}
        self.extra_args = list(extra_args or [])
        self.threads = threads
        self.cpu = cpu
        self.proc: subprocess.Popen | None = None
        self.log_path = self.base_dir / "comfyui_server.log"
        self._log_file = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def user_dir(self) -> Path:
        return self.base_dir / "user"

    def prepare(self) -> None:
        if not (self.comfy_dir / "main.py").is_file():
            raise ServerError(f"no ComfyUI at {self.comfy_dir} (main.py missing): run `bash tools/bootstrap.sh` "
                              "or set COMFYUI_PATH to a ComfyUI checkout")
        for sub in ("custom_nodes", "input", "output", "temp", "user/default"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        packs = dict(self.extra_packs)
        if self.pack_dir is not None:
            packs[self.pack_name] = self.pack_dir
        for name, target in packs.items():
            link = self.base_dir / "custom_nodes" / name
            if link.is_symlink() and link.resolve() != target:
                link.unlink()
            if not link.exists():
                link.symlink_to(target, target_is_directory=True)
        # Without this the frontend covers the canvas with a full-screen templates dialog.
        settings = self.user_dir / "default" / "comfy.settings.json"
        if not settings.exists():
            settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))

    def command(self) -> list[str]:
        b = self.base_dir
        cmd = [self.python, str(self.comfy_dir / "main.py")] + (["--cpu"] if self.cpu else [])
        cmd += ["--listen", "127.0.0.1", "--port", str(self.port), "--base-directory", str(b),
               "--input-directory", str(b / "input"),
               "--output-directory", str(b / "output"), "--temp-directory", str(b / "temp"),
               "--user-directory", str(b / "user"), "--database-url", f"sqlite:///{b / 'comfyui.db'}",
               "--disable-auto-launch", "--disable-api-nodes"]
        if self.extra_model_paths:
            cmd += ["--extra-model-paths-config", str(self.extra_model_paths)]
        return cmd + self.extra_args

    def start(self, timeout: float = 180.0) -> "ComfyServer":
        self.prepare()
        env = dict(os.environ)
        # Two shared cores: one OpenMP thread keeps small forwards fast when another process computes.
        env["OMP_NUM_THREADS"] = str(self.threads)
        env["MKL_NUM_THREADS"] = str(self.threads)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command(), cwd=str(self.comfy_dir), env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {self.proc.returncode} before it was ready\n"
                                  + self.log_tail())
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"ComfyUI did not answer /system_stats within {timeout:.0f} s\n" + self.log_tail())
            time.sleep(0.25)
        self.check_pack_imported()
        return self

    def check_pack_imported(self) -> None:
        """Fail fast when the pack or a linked test node folder raised at import (ComfyUI drops its nodes)."""
        names = list(self.extra_packs) + ([self.pack_name] if self.pack_dir is not None else [])
        if not names:
            return
        text = self.log_text()
        bad = [ln for ln in text.splitlines() if IMPORT_FAILED in ln and any(n in ln for n in names)]
        if bad:
            self.stop()
            raise ServerError(f"a linked custom node folder failed to import into ComfyUI: {bad[0].strip()}\n"
                              + self.log_tail(200))

    def log_text(self) -> str:
        if self._log_file is not None:
            self._log_file.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 120) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return f"--- ComfyUI log ({self.log_path}), last {len(tail)} lines ---\n" + "\n".join(tail)

    def stop(self, timeout: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class PromptRejected(Exception):
    """POST /prompt answered with an error (HTTP 400): the prompt failed validation."""

    def __init__(self, status: int, body: dict):
        self.status, self.body = status, body
        super().__init__(f"HTTP {status}: {json.dumps(body)[:2000]}")

    @property
    def node_errors(self) -> dict:
        return self.body.get("node_errors") or {}

    def messages(self) -> list[str]:
        """Every error message and detail in the answer, flattened (for 'the message names the input')."""
        out = []
        err = self.body.get("error") or {}
        out += [str(err.get("message", "")), str(err.get("details", ""))]
        for ne in self.node_errors.values():
            for e in ne.get("errors", []):
                out += [str(e.get("type", "")), str(e.get("message", "")), str(e.get("details", "")),
                        json.dumps(e.get("extra_info", {}))]
        return [m for m in out if m]


@dataclass
class VideoInfo:
    frames: int
    width: int
    height: int
    fps: float


class ComfyClient:
    def __init__(self, url: str, client_id: str | None = None):
        self.url = url.rstrip("/")
        self.client_id = client_id or uuid.uuid4().hex

    # -- plain HTTP -------------------------------------------------------------------------------
    def _request(self, path: str, data: dict | None = None, timeout: float = 60.0):
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.url + path, data=body, method="GET" if data is None else "POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get_json(self, path: str):
        status, raw = self._request(path)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}: {raw[:500]!r}")
        return json.loads(raw)

    def object_info(self, node_class: str | None = None) -> dict:
        if node_class is None:
            return self.get_json("/object_info")
        return self.get_json("/object_info/" + urllib.parse.quote(node_class)).get(node_class, {})

    def system_stats(self) -> dict:
        return self.get_json("/system_stats")

    def queue(self) -> dict:
        return self.get_json("/queue")

    def post_prompt_raw(self, graph: dict, client_id: str | None = None, **extra) -> tuple[int, dict]:
        payload = {"prompt": strip_meta(graph), "client_id": client_id or self.client_id, **extra}
        status, raw = self._request("/prompt", payload)
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"raw": raw.decode(errors="replace")}
        return status, body

    def post_prompt(self, graph: dict, client_id: str | None = None, **extra) -> str:
        status, body = self.post_prompt_raw(graph, client_id, **extra)
        if status != 200 or body.get("node_errors"):
            raise PromptRejected(status, body)
        return body["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.get_json(f"/history/{prompt_id}").get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 300.0, poll: float = 0.2) -> dict:
        """Block until the prompt finished (success, error or interrupted); return its /history entry."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None \
                    and entry["status"].get("status_str") in ("success", "error"):
                return entry
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} not finished after {timeout:.0f} s; queue: {self.queue()}")
            time.sleep(poll)

    def run(self, graph: dict, timeout: float = 300.0, **extra) -> dict:
        return self.wait(self.post_prompt(graph, **extra), timeout)

    def interrupt(self, prompt_id: str | None = None) -> None:
        status, raw = self._request("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})
        if status != 200:
            raise RuntimeError(f"POST /interrupt: HTTP {status}: {raw[:300]!r}")

    def clear_queue(self) -> None:
        self._request("/queue", {"clear": True})

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        self._request("/free", {"unload_models": unload_models, "free_memory": free_memory})

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        status, raw = self._request("/view?" + q)
        if status != 200:
            raise RuntimeError(f"GET /view {filename}: HTTP {status}")
        return raw

    def listen(self, client_id: str | None = None) -> "WsListener":
        return WsListener(self.url, client_id or self.client_id)

    # -- results ----------------------------------------------------------------------------------
    def download_outputs(self, entry: dict, dest: Path) -> list[Path]:
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        paths = []
        for f in output_files(entry):
            p = dest / Path(f["filename"]).name
            p.write_bytes(self.view(f["filename"], f.get("subfolder", ""), f.get("type", "output")))
            paths.append(p)
        return paths


def combo_options(node_info: dict, input_name: str) -> list:
    """The choices of a COMBO input in /object_info, in either layout ([[choices], opts] or ["COMBO", {options}])."""
    for section in ("required", "optional"):
        spec = node_info.get("input", {}).get(section, {}).get(input_name)
        if spec is None:
            continue
        if isinstance(spec[0], list):
            return list(spec[0])
        if spec[0] == "COMBO" and len(spec) > 1:
            return list(spec[1].get("options", []))
        raise ValueError(f"{input_name} is not a COMBO input: {spec[0]}")
    raise KeyError(f"no input {input_name!r} in {node_info.get('name')}")


def strip_meta(graph: dict) -> dict:
    """API-format prompt without the UI-only `_meta` titles."""
    return {k: {kk: vv for kk, vv in v.items() if kk != "_meta"} for k, v in graph.items()}


def status_str(entry: dict) -> str:
    return entry.get("status", {}).get("status_str", "")


def messages(entry: dict, kind: str | None = None) -> list:
    """The execution messages recorded in a /history entry: [(type, data), ...], optionally one type."""
    msgs = [tuple(m) for m in entry.get("status", {}).get("messages", [])]
    return [m for m in msgs if kind is None or m[0] == kind]


def execution_error(entry: dict) -> dict | None:
    found = messages(entry, "execution_error")
    return found[0][1] if found else None


def output_files(entry: dict, keys=("images", "gifs", "videos", "video")) -> list[dict]:
    """Files listed in a /history entry's outputs (SaveVideo reports its mp4 under "images")."""
    out = []
    for node_out in entry.get("outputs", {}).values():
        for k in keys:
            for f in node_out.get(k, []) or []:
                if isinstance(f, dict) and "filename" in f:
                    out.append(f)
    return out


def describe_failure(entry: dict) -> str:
    err = execution_error(entry)
    if err:
        return (f"{err.get('exception_type')}: {err.get('exception_message')} (node {err.get('node_id')} "
                f"{err.get('node_type')})\n" + "".join(err.get("traceback", []))[-3000:])
    return json.dumps(entry.get("status", {}))[:3000]


class WsListener:
    """Collects the messages the server sends to one client id, on a background thread: JSON messages in
    `messages`, binary frames (previews) in `binary`."""

    PREVIEW_IMAGE = 1  # binary event: 4-byte event, 4-byte format (1 = JPEG, 2 = PNG), image bytes

    def __init__(self, url: str, client_id: str):
        import websocket  # websocket-client, one of ComfyUI's requirements

        self.client_id = client_id
        self.messages: list[dict] = []
        self.binary: list[bytes] = []
        self._cond = threading.Condition()
        ws_url = url.replace("http://", "ws://", 1) + "/ws?clientId=" + urllib.parse.quote(client_id)
        self._ws = websocket.create_connection(ws_url, timeout=30)
        self._ws.settimeout(0.5)
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        import websocket

        while not self._stop:
            try:
                msg = self._ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketException, OSError):
                break
            if isinstance(msg, str):
                data = json.loads(msg)
                with self._cond:
                    self.messages.append(data)
                    self._cond.notify_all()
            elif isinstance(msg, bytes):
                with self._cond:
                    self.binary.append(msg)

    def previews(self) -> list[tuple[int, "object"]]:
        """(format, PIL image) of every PREVIEW_IMAGE frame received so far (binary frames carry no prompt id:
        listen on a client id of its own)."""
        import io
        import struct

        from PIL import Image

        with self._cond:
            frames = list(self.binary)
        out = []
        for msg in frames:
            event, fmt = struct.unpack(">II", msg[:8])
            if event == self.PREVIEW_IMAGE:
                out.append((fmt, Image.open(io.BytesIO(msg[8:]))))
        return out

    def of_type(self, kind: str, prompt_id: str | None = None) -> list[dict]:
        with self._cond:
            msgs = list(self.messages)
        return [m["data"] for m in msgs if m.get("type") == kind
                and (prompt_id is None or (m.get("data") or {}).get("prompt_id") == prompt_id)]

    def wait_for(self, kind: str, prompt_id: str | None = None, timeout: float = 120.0, predicate=None) -> dict:
        """The first message of `kind` (for `prompt_id`, matching `predicate`), waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages:
                    d = m.get("data") or {}
                    if m.get("type") == kind and (prompt_id is None or d.get("prompt_id") == prompt_id) \
                            and (predicate is None or predicate(d)):
                        return d
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no websocket '{kind}' message within {timeout:.0f} s; got types "
                                       f"{sorted({m.get('type') for m in self.messages})}")
                self._cond.wait(min(left, 0.5))

    def close(self):
        self._stop = True
        self._thread.join(timeout=5)
        try:
            self._ws.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_video_info(path: Path) -> VideoInfo:
    """Frame count (decoded, not the container's estimate), size and frame rate of a video file."""
    import av

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        n = sum(1 for _ in c.decode(stream))
        return VideoInfo(frames=n, width=stream.codec_context.width, height=stream.codec_context.height,
                         fps=float(stream.average_rate or 0))


def read_video_frames(path: Path):
    """All frames as a uint8 numpy array (T, H, W, 3), RGB."""
    import av
    import numpy as np

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])
