"""Reliability and security through a real headless ComfyUI (fixtures: tests/support/server_fixtures.py).

Malicious and broken model files, names that leave the models folder, output prefixes that leave the
output folder, 20 random interrupts with the server's host memory measured, a simulated out-of-memory
error, a 50-prompt soak of mixed valid and invalid prompts, and absurd input values. After each abuse
the server must still answer and run a valid prompt.

Tests marked `xfail(strict=True)` encode the wanted behaviour of a node fix not applied yet (the patch is
named in the reason); once it is applied they pass, strict xfail turns that into a failure, and the mark
must go.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pickle
import random
import shutil
import sys
import time
import types
import warnings
from pathlib import Path

import pytest
import torch

from tests.support.comfy_client import (REPO_ROOT, ComfyClient, ComfyServer, PromptRejected, describe_failure, execution_error,
                          messages, status_str, write_extra_model_paths)
from tests.support.graphs import WORKFLOWS, continue_input, fast, run_ok, stream_graph  # noqa: F401 (fixture)

TINY_CKPT = "tiny_streamingt2v.safetensors"
TINY_UNET = "tiny_modelscope_t2v.safetensors"
REFINER = "tiny_ms_vid2vid"  # the tiny refiner: one subfolder of models/streamingt2v_refiner
OOM_TEST_ENV = "STREAMINGT2V_TEST_OOM_AT_CHUNK"
SEED_MAX = 2 ** 64 - 1



# -- helpers ----------------------------------------------------------------------------------------

def bridge_module(name: str):
    """comfy_bridge/<name>.py loaded on its own (the pack's packages import ComfyUI, which this process lacks;
    these modules import no other module of the pack)."""
    spec = importlib.util.spec_from_file_location(f"st2v_bridge_{name}", REPO_ROOT / "comfy_bridge" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def server_rss(server: ComfyServer) -> int:
    """Resident host memory of the ComfyUI process, in bytes (psutil: one of ComfyUI's requirements)."""
    import psutil

    return psutil.Process(server.proc.pid).memory_info().rss


def small(seed: int, **kw) -> dict:
    """The cheapest full prompt of the pack: 16 given frames + 1 CAM chunk of 1 step + mp4."""
    return stream_graph(frames_to_add=8, steps=1, seed=seed, prefix="video/st2v_rel", **kw)


def refine_graph(seed: int = 0, frames: int = 8, steps: int = 1, chunk: int = 4, overlap: int = 2,
                 dtype: str = "fp32", **inputs) -> dict:
    return {
        "1": {"class_type": "LoadStreamingT2VRefiner", "inputs": {"refiner_name": REFINER, "dtype": dtype}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": frames,
                                                      "color": 0x336699}},
        "3": {"class_type": "RandomizedBlendRefiner", "inputs": {
            "refiner": ["1", 0], "images": ["2", 0], "prompt": "a test video", "negative_prompt": "",
            "strength_step": 600, "steps": steps, "guidance": 7.5, "rescale": 0.2, "chunk": chunk,
            "overlap": overlap, "seed": seed, "output": "crop to content", **inputs}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }


def workflow(name: str, seed: int, frames_to_add: int = 8) -> dict:
    g = fast(json.loads((WORKFLOWS / f"{name}_api.json").read_text()), steps=1)
    for node in g.values():
        if node["class_type"] == "CAMExtendChunk":
            node["inputs"].update(frames_to_add=frames_to_add, seed=seed)
        if node["class_type"] == "StreamingT2VInitFromText":
            node["inputs"]["seed"] = seed
        if node["class_type"] == "SaveVideo":
            node["inputs"]["filename_prefix"] = "video/st2v_soak_" + name
    return g


def still_serving(server: ComfyServer, client: ComfyClient, seed: int) -> None:
    assert server.alive(), "ComfyUI died\n" + server.log_tail()
    client.system_stats()  # raises unless HTTP 200
    run_ok(client, small(seed))


def rejected_at(client: ComfyClient, graph: dict, node: str, *words: str) -> str:
    """HTTP 400 with an error at `node` whose text holds every word; returns that text."""
    status, body = client.post_prompt_raw(graph)
    if status == 200 and not body.get("node_errors"):
        entry = client.wait(body["prompt_id"], timeout=300)  # accepted: let it finish, then fail
        pytest.fail(f"accepted at validation (then {status_str(entry)}): {describe_failure(entry)[:800]}")
    answer = PromptRejected(status, body)
    assert status == 400, body
    assert node in answer.node_errors, body
    text = " ".join(answer.messages())
    for w in words:
        assert w in text, f"{w!r} not in the answer: {text}"
    return text


def failed_with(client: ComfyClient, graph: dict, node_type: str, *words: str) -> dict:
    entry = client.run(graph, timeout=300)
    assert status_str(entry) == "error", f"expected an error, got {status_str(entry)}"
    assert not messages(entry, "execution_interrupted")
    err = execution_error(entry)
    assert err is not None and err["node_type"] == node_type, describe_failure(entry)
    for w in words:
        assert w in err["exception_message"], f"{w!r} not in: {err['exception_message']}"
    return err


# -- planted files in the test models folder ------------------------------------------------------

class Evil:
    """Unpickling this calls `call(arg)`: what a malicious .ckpt does."""

    def __init__(self, call, arg):
        self.call, self.arg = call, arg

    def __reduce__(self):
        return (self.call, (self.arg,))


@pytest.fixture
def plant(tiny_models_dir):
    """Put a file into the session's models/<folder> (default streamingt2v): bytes, a copy, a symlink, or an
    object written with torch.save. Everything planted is removed after the test."""
    made: list[Path] = []

    def put(relpath: str, data: bytes | None = None, *, copy_of: Path | None = None, link_to: Path | None = None,
            torch_save=None, folder: str = "streamingt2v") -> Path:
        path = tiny_models_dir / folder / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        made.append(path)
        if link_to is not None:
            path.symlink_to(link_to, target_is_directory=link_to.is_dir())
        elif copy_of is not None:
            shutil.copyfile(copy_of, path)
        elif torch_save is not None:
            torch.save(torch_save, path)
        else:
            path.write_bytes(data)
        return path

    yield put
    for p in reversed(made):
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)


@pytest.fixture
def tiny(tiny_models_dir) -> dict:
    d = tiny_models_dir / "streamingt2v"
    return {"weights": d / TINY_CKPT, "config": d / "tiny_streamingt2v.json",
            "unet": tiny_models_dir / "diffusion_models" / TINY_UNET}


def evil_payloads(marker: Path) -> list:
    # os.system pickles as posix.system; exec is a builtin outside the unpickler's container allow-list
    return [Evil(os.system, f"touch {marker}"), Evil(exec, f"open({str(marker)!r}, 'w').write('ran')")]


def with_ckpt(seed: int, name: str) -> dict:
    g = small(seed)
    g["1"]["inputs"]["ckpt_name"] = name
    return g


def test_pickle_that_would_run_code_is_refused_and_runs_nothing(server_alive, comfy, plant, tmp_path):
    """common/weights.py reads .ckpt with weights_only, then a restricted unpickler that turns every foreign
    global into an inert stand-in: a pickle that is only a payload holds no state_dict, so the loader
    refuses it (CheckpointError naming the file and the fix) and the payload never runs."""
    marker = tmp_path / "PICKLE_RAN"
    for i, payload in enumerate(evil_payloads(marker)):
        name = f"evil_only_{i}.ckpt"
        plant(name, torch_save=payload)
        err = failed_with(comfy, with_ckpt(1000 + i, name), "LoadStreamingT2V", name, "not a checkpoint dictionary",
                          "streamingt2v_core.convert")
        assert err["exception_type"].endswith("CheckpointError")
        assert not marker.exists(), "the checkpoint's pickle ran code in the server"
    # payload inside the state_dict instead of a tensor
    plant("evil_in_state.ckpt", torch_save={"state_dict": {"base_model.conv_in.weight": evil_payloads(marker)[0]}})
    failed_with(comfy, with_ckpt(1003, "evil_in_state.ckpt"), "LoadStreamingT2V", "evil_in_state.ckpt",
                "not tensors")
    # a TorchScript archive: torch.load would hand it to torch.jit.load, which runs its code
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated; old files still exist
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(plant("scripted.pt", b"")))
    failed_with(comfy, with_ckpt(1006, "scripted.pt"), "LoadStreamingT2V", "scripted.pt", "TorchScript archive")
    # a raw pickle without torch's zip container: not a torch file at all
    plant("evil_raw.pt", pickle.dumps(evil_payloads(marker)[0], protocol=2))
    failed_with(comfy, with_ckpt(1004, "evil_raw.pt"), "LoadStreamingT2V", "evil_raw.pt", "corrupt")
    assert not marker.exists(), "a pickle ran code in the server"
    still_serving(server_alive, comfy, 1005)


def test_ckpt_with_valid_weights_and_a_code_payload_loads_the_weights_only(server_alive, comfy, plant, tiny,
                                                                           tmp_path):
    """The official .ckpt carries Lightning extras beside the weights; a payload among them becomes an inert
    stand-in and the weights load (the design's rule: only the tensors under state_dict are kept)."""
    from safetensors.torch import load_file

    marker = tmp_path / "PICKLE_RAN"
    state = load_file(str(tiny["weights"]))
    plant("with_payload.ckpt", torch_save={"state_dict": state, "callbacks": evil_payloads(marker),
                                           "hyper_parameters": evil_payloads(marker)[0]})
    plant("with_payload.json", copy_of=tiny["config"])
    run_ok(comfy, with_ckpt(1020, "with_payload.ckpt"))
    assert not marker.exists(), "the checkpoint's pickle ran code in the server"
    still_serving(server_alive, comfy, 1021)


def test_truncated_and_wrong_files_give_a_clear_error(server_alive, comfy, plant, tiny):
    raw = tiny["weights"].read_bytes()
    plant("cut_in_data.safetensors", raw[: len(raw) // 2])
    plant("cut_in_header.safetensors", raw[:100])
    plant("empty.safetensors", b"")
    plant("html_page.safetensors", b"<!DOCTYPE html><html>404 Not Found</html>")
    plant("modelscope_unet.safetensors", copy_of=tiny["unet"])
    cases = [("cut_in_data.safetensors", "truncated or corrupt", "download it again"),
             ("cut_in_header.safetensors", "truncated or corrupt", "download it again"),
             ("empty.safetensors", "empty", "download it again"),
             ("html_page.safetensors", "HTML error page", "download it again"),
             # the ModelScope UNet's own file: named for what it is
             ("modelscope_unet.safetensors", "not streaming_t2v.ckpt", "UNet3DConditionModel")]
    for i, (name, *words) in enumerate(cases):
        err = failed_with(comfy, with_ckpt(1030 + i, name), "LoadStreamingT2V", name, *words)
        assert err["exception_type"].endswith("CheckpointError")
    still_serving(server_alive, comfy, 1039)


@pytest.fixture(scope="module")
def outside(tmp_path_factory, tiny_models_dir) -> dict:
    """Things outside every models folder: a weights file and a folder that looks converted."""
    tiny = {"weights": tiny_models_dir / "streamingt2v" / TINY_CKPT,
            "config": tiny_models_dir / "streamingt2v" / "tiny_streamingt2v.json"}
    tmp_path = tmp_path_factory.mktemp("outside_models")
    files = tmp_path / "outside"
    files.mkdir()
    shutil.copyfile(tiny["weights"], files / TINY_CKPT)
    shutil.copyfile(tiny["config"], files / "tiny_streamingt2v.json")
    conv = tmp_path / "outside_converted"
    conv.mkdir()
    shutil.copyfile(tiny["config"], conv / "config.json")
    shutil.copyfile(tiny["weights"], conv / "base_model.safetensors")
    return {"dir": files, "file": files / TINY_CKPT, "converted": conv}


def _traversal_cases():
    return [
        # (node input, name factory, marks): each name must be refused at validation (HTTP 400)
        pytest.param("ckpt_name", lambda o, m: "../streamingt2v/" + TINY_CKPT, id="ckpt-dotdot-into-folder"),
        pytest.param("ckpt_name", lambda o, m: str(o["file"]), id="ckpt-absolute-file"),
        pytest.param("ckpt_name", lambda o, m: "/etc/passwd", id="ckpt-etc-passwd"),
        # ComfyUI's get_full_path folds '../../x' back into the folder: refused by name, not silently remapped
        pytest.param("ckpt_name", lambda o, m: "../../" + TINY_CKPT, id="ckpt-dotdot-folded"),
        # the converted-folder lookup joins the raw name: a folder outside is reachable without the patch
        pytest.param("ckpt_name", lambda o, m: os.path.relpath(o["converted"], m / "streamingt2v"),
                     id="ckpt-dotdot-converted-folder"),
        pytest.param("ckpt_name", lambda o, m: str(o["converted"]), id="ckpt-absolute-converted-folder"),
        pytest.param("unet_name", lambda o, m: "../streamingt2v/" + TINY_CKPT, id="unet-dotdot"),
        pytest.param("unet_name", lambda o, m: "../../" + TINY_UNET, id="unet-dotdot-folded"),
        pytest.param("refiner_name", lambda o, m: "/etc/passwd", id="refiner-etc-passwd"),
        pytest.param("refiner_name", lambda o, m: "../diffusion_models/" + TINY_UNET, id="refiner-dotdot-file"),
        pytest.param("refiner_name", lambda o, m: str(m / "streamingt2v_refiner" / REFINER), id="refiner-absolute-folder"),
    ]


@pytest.mark.compat
@pytest.mark.parametrize("input_name,make_name", _traversal_cases())
def test_model_names_that_leave_the_models_folder_are_refused_at_validation(comfy, outside, tiny_models_dir,
                                                                            input_name, make_name):
    name = make_name(outside, tiny_models_dir)
    if input_name == "ckpt_name":
        g, node = with_ckpt(1040, name), "1"
    elif input_name == "unet_name":
        g = workflow("long_video", 1041)
        g["2"]["inputs"]["unet_name"] = name
        node = "2"
    else:
        g, node = refine_graph(1042), "1"
        g["1"]["inputs"]["refiner_name"] = name
    rejected_at(comfy, g, node, input_name)


def test_symlinks_inside_the_models_folder_are_followed(server_alive, comfy, plant, outside, tiny_models_dir):
    """ComfyUI users symlink model files and folders into models/ on purpose: a symlink in the folder is
    listed and loads (its name has no '..'); a dangling one is refused at validation."""
    plant("linked.safetensors", link_to=outside["file"])
    plant("linked.json", link_to=outside["dir"] / "tiny_streamingt2v.json")  # the sidecar config, by the link's name
    plant("linked_dir", link_to=outside["dir"])
    plant("dangling.safetensors", link_to=outside["dir"] / "gone.safetensors")
    options = comfy.object_info("LoadStreamingT2V")["input"]["required"]["ckpt_name"][1]["options"]
    assert {"linked.safetensors", "linked_dir/" + TINY_CKPT} <= set(options), options
    run_ok(comfy, with_ckpt(1050, "linked.safetensors"))
    run_ok(comfy, with_ckpt(1051, "linked_dir/" + TINY_CKPT))
    rejected_at(comfy, with_ckpt(1052, "dangling.safetensors"), "1", "ckpt_name", "dangling.safetensors")
    still_serving(server_alive, comfy, 1053)


@pytest.mark.parametrize("prefix", ["../../st2v_escape", "video/../../../st2v_escape", "/tmp/st2v_escape_abs"])
def test_save_prefix_outside_the_output_folder_is_refused(server_alive, comfy, prefix):
    """ComfyUI core refuses it (SaveVideo raises); nothing lands outside the output folder."""
    g = small(1060)  # the same seed each time: the stream comes from the cache, only SaveVideo runs again
    g["6"]["inputs"]["filename_prefix"] = prefix
    err = failed_with(comfy, g, "SaveVideo", "outside the output folder")
    assert err is not None
    base = server_alive.base_dir
    escaped = [p for root in (base, base.parent, Path("/tmp")) for p in root.glob("st2v_escape*")]
    assert not escaped, escaped
    still_serving(server_alive, comfy, 1061)


# -- interrupts -------------------------------------------------------------------------------------

INTERRUPT_RUNS = 20


def _long_stream(seed: int, dtype: str) -> dict:
    # 400 chunks of 2 steps: never finishes within the 3 s before the interrupt, and chunk borders come
    # often. The loader's dtype changes now and then ("fp32" / "auto" are both fp32 on the CPU), so the
    # loader runs again and an interrupt can land while it loads.
    g = stream_graph(frames_to_add=3200, steps=2, seed=seed, prefix="video/st2v_rel_interrupted")
    g["1"]["inputs"]["dtype"] = dtype
    return g


def _long_refine(seed: int, dtype: str) -> dict:
    return refine_graph(seed=seed, frames=24, steps=1000, chunk=8, overlap=4, dtype=dtype)


def _where(data: dict, progress: list, steps_per_chunk: int) -> str:
    """Where an interrupt landed, from the execution_interrupted message and the node's progress so far."""
    node_type = data.get("node_type")
    if node_type in ("StreamingT2VInitFromFrames", "ChunkAssembler"):
        return f"loading (caught before {node_type})"  # loaders do not poll; ComfyUI checks between nodes
    if node_type != "CAMExtendChunk":
        return str(node_type)
    done = [d["value"] for d in progress if d.get("node") == data.get("node_id")]
    if not done:
        return "CAMExtendChunk before its first step"
    return "CAMExtendChunk between chunks" if done[-1] % steps_per_chunk == 0 else "CAMExtendChunk mid-chunk"


def test_twenty_random_interrupts_leak_no_host_memory(server_alive, comfy, tmp_path):
    """Interrupt at a seeded random 0.2-3 s after the prompt starts (or after the first CAM step, one run in
    four): while loading, before the first step, mid-chunk, between chunks, in the refiner. Every run must
    end interrupted (or, if it won the race, succeed), nothing is written, the server's RSS after the 20th
    run is within 5% + 50 MB of after the first, and the next prompt runs."""
    rng = random.Random(20261121)
    client = ComfyClient(comfy.url)
    # warm-up: every code path once to the end, so allocator pools and lazy imports are not counted as leaks
    run_ok(client, stream_graph(frames_to_add=16, steps=2, seed=1999, prefix="video/st2v_rel_warm"))
    run_ok(client, refine_graph(seed=1999))
    outcomes, rss = [], []
    for i in range(INTERRUPT_RUNS):
        dtype = "fp32" if (i // 5) % 2 == 0 else "auto"  # a reload every fifth run
        refine = i % 4 == 1  # one run in four interrupts the refiner
        graph = _long_refine(2000 + i, dtype) if refine else _long_stream(2000 + i, dtype)
        delay = rng.uniform(0.2, 3.0)
        with client.listen() as ws:
            pid = client.post_prompt(graph)
            if i % 4 == 3:  # one run in four counts from the first CAM step, to reach later chunks
                ws.wait_for("progress", pid, timeout=120, predicate=lambda d: d.get("node") == "4")
            else:
                ws.wait_for("execution_start", pid, timeout=120)
            time.sleep(delay)
            client.interrupt()
            entry = client.wait(pid, timeout=120)
            progress = ws.of_type("progress", pid)
        stopped = messages(entry, "execution_interrupted")
        if stopped:
            outcomes.append(("interrupted", _where(stopped[0][1], progress, 2), round(delay, 2)))
        else:
            assert status_str(entry) == "success", describe_failure(entry)
            outcomes.append(("finished first", None, round(delay, 2)))
        assert not execution_error(entry), describe_failure(entry)
        rss.append(server_rss(server_alive))
    interrupted = [o for o in outcomes if o[0] == "interrupted"]
    print("interrupt outcomes:", outcomes)
    print("server RSS after each run (MiB):", [round(r / 2**20) for r in rss])
    assert len(interrupted) >= 15, outcomes
    places = {o[1] for o in interrupted}
    assert {"CAMExtendChunk mid-chunk", "RandomizedBlendRefiner"} <= places and len(places) >= 4, outcomes
    assert rss[-1] < rss[0] * 1.05 + 50 * 2**20, [round(r / 2**20) for r in rss]
    assert not list((server_alive.output_dir / "video").glob("st2v_rel_interrupted*"))
    still_serving(server_alive, comfy, 2100)


# -- out of memory ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def oom_server(tmp_path_factory, tiny_models_dir):
    """A second, short-lived server started with the OOM test seam on: chunk 1 of every CAM run raises
    torch.OutOfMemoryError (chunk 0 runs normally)."""
    base = tmp_path_factory.mktemp("comfy_oom")
    yaml_path = base / "extra_model_paths.yaml"
    write_extra_model_paths(yaml_path, tiny_models_dir)
    server = ComfyServer(base, extra_model_paths=yaml_path)
    saved = os.environ.get(OOM_TEST_ENV)
    os.environ[OOM_TEST_ENV] = "1"  # ComfyServer.start copies this process's environment
    try:
        server.start()
    finally:
        if saved is None:
            os.environ.pop(OOM_TEST_ENV)
        else:
            os.environ[OOM_TEST_ENV] = saved
    yield server
    server.stop()


def test_out_of_memory_in_a_chunk_names_the_settings_and_the_next_prompt_runs(oom_server):
    client = ComfyClient(oom_server.url)
    entry = client.run(stream_graph(frames_to_add=16, steps=1, seed=3000, prefix="video/st2v_oom"), timeout=300)
    assert status_str(entry) == "error", "the simulated OOM did not happen (is the test seam in the chunk loop?)"
    err = execution_error(entry)
    assert err["node_type"] == "CAMExtendChunk"
    assert err["exception_type"].endswith("OutOfMemoryError"), err["exception_type"]
    msg = err["exception_message"]
    for words in ("out of memory", "fp16", "bf16", "frames_to_add", "64x64", "offload", "--lowvram", "unloaded",
                  "memory 'low vram'"):
        assert words in msg, f"{words!r} not in: {msg}"
    log = oom_server.log_text()
    assert "Got an OOM, unloading all loaded models." in log  # ComfyUI's own OOM path ran: models offloaded
    assert not list((oom_server.output_dir / "video").glob("st2v_oom*"))
    # chunk 0 only: below the seam, so the same server runs it
    run_ok(client, stream_graph(frames_to_add=8, steps=1, seed=3001, prefix="video/st2v_after_oom"))
    assert oom_server.alive()


def test_oom_advice_converts_only_out_of_memory_errors(monkeypatch):
    """comfy_bridge/oom.py on its own: OOM (accelerator or CPU allocator) becomes the advised error after memory
    is freed; any other error passes through as the same object; unknown setting names fail at once."""
    errors = bridge_module("oom")
    freed = []
    monkeypatch.setattr(errors, "free_after_oom", lambda: freed.append(1))
    settings = {"dtype": "torch.float32", "chunk": 24, "frames": 1200}
    for cause in (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                  RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 99 bytes"),
                  MemoryError()):
        with pytest.raises(errors.StreamingT2VOutOfMemoryError) as got:
            with errors.oom_advice("RandomizedBlendRefiner", settings):
                raise cause
        assert isinstance(got.value, torch.OutOfMemoryError) and got.value.__cause__ is cause
        text = str(got.value)
        for words in ("RandomizedBlendRefiner", "fp16", "chunk is 24", "1200", "offload"):
            assert words in text, text
    assert len(freed) == 3
    for other in (RuntimeError("shape mismatch"), ValueError("steps: 0"), KeyboardInterrupt()):
        with pytest.raises(type(other)) as got:
            with errors.oom_advice("CAMExtendChunk", {"dtype": "fp32"}):
                raise other
        assert got.value is other
    assert len(freed) == 3
    with pytest.raises(KeyError):
        with errors.oom_advice("CAMExtendChunk", {"batch_size": 4}):
            pass
    monkeypatch.delenv(OOM_TEST_ENV, raising=False)
    errors.simulate_oom_for_tests(1)  # unset: nothing
    monkeypatch.setenv(OOM_TEST_ENV, "2")
    errors.simulate_oom_for_tests(1)
    with pytest.raises(torch.OutOfMemoryError):
        errors.simulate_oom_for_tests(2)


def test_model_name_problem_accepts_subfolders_and_refuses_escapes(monkeypatch):
    # the name check reads no folder: an empty stand-in for ComfyUI's folder_paths serves
    monkeypatch.setitem(sys.modules, "folder_paths", types.ModuleType("folder_paths"))
    problem = bridge_module("models").model_name_problem
    for ok in ("tiny.safetensors", "sub/dir/tiny.ckpt", "a..b.safetensors", "converted_folder"):
        assert problem("ckpt_name", ok, "streamingt2v") is None, ok
    for bad in ("../x.ckpt", "a/../../x", "/etc/passwd", "C:\\models\\x.ckpt", "..\\x", "..", "x\0y", ""):
        msg = problem("ckpt_name", bad, "streamingt2v")
        assert msg and msg.startswith("ckpt_name:") and "models/streamingt2v" in msg, (bad, msg)


# -- soak -------------------------------------------------------------------------------------------

def _soak_valid(kind: str, seed: int) -> dict:
    if kind == "stream":
        return small(seed)
    if kind == "refine":
        return refine_graph(seed=seed)
    return workflow(kind, seed, frames_to_add=16 if kind == "story_prompts" else 8)


def _soak_invalid(kind: str, seed: int) -> dict:
    g = small(seed)
    cam = g["4"]["inputs"]
    if kind == "zero frames":
        cam["frames_to_add"] = 0
    elif kind == "negative guidance":
        cam["guidance"] = -3.0
    elif kind == "bad ckpt name":
        g["1"]["inputs"]["ckpt_name"] = "not_there.safetensors"
    elif kind == "dotdot ckpt name":
        g["1"]["inputs"]["ckpt_name"] = "../streamingt2v/" + TINY_CKPT
    elif kind == "seed beyond 2^64":
        cam["seed"] = 2 ** 64 + seed
    elif kind == "zero steps":
        cam["steps"] = 0
    elif kind == "huge size":
        g["3"]["inputs"]["width"] = 16384
    elif kind == "unknown node":
        g["9"] = {"class_type": "NoSuchNodeAnywhere", "inputs": {}}
    elif kind == "wrong link type":
        cam["model"] = ["2", 0]  # an IMAGE into the model socket
    elif kind == "refiner overlap >= chunk":
        g = refine_graph(seed=seed, chunk=4, overlap=4)
    elif kind == "5 init frames":  # accepted, then the node refuses before any work
        g["2"]["inputs"]["batch_size"] = 5
    elif kind == "anchor index beyond":
        g["7"] = {"class_type": "AnchorFrameAPM", "inputs": {"model": ["1", 0], "frames": ["2", 0], "index": 99}}
        cam["anchor"] = ["7", 0]
    else:
        raise KeyError(kind)
    return g


SOAK_VALID = ["long_video", "continue_video", "story_prompts", "refine", "stream"]
SOAK_INVALID = ["zero frames", "negative guidance", "bad ckpt name", "dotdot ckpt name", "seed beyond 2^64",
                "zero steps", "huge size", "unknown node", "wrong link type", "refiner overlap >= chunk",
                "5 init frames", "anchor index beyond"]


def test_soak_fifty_mixed_prompts(server_alive, comfy, continue_input):  # noqa: F811 (fixture)
    """50 API prompts in a row: the five valid kinds first (every model loaded), then 44 drawn at random
    (about 60% invalid), the last the same kind as the fifth. Valid ones succeed, invalid ones are refused
    (HTTP 400 or an execution error, never a crash), and host RSS after the last is within 5% of after the
    fifth."""
    rng = random.Random(50)
    middle = [("valid", rng.choice(SOAK_VALID)) if rng.random() < 0.4 else ("invalid", rng.choice(SOAK_INVALID))
              for _ in range(44)]
    plan = [("valid", k) for k in SOAK_VALID] + middle + [("valid", SOAK_VALID[-1])]
    assert len(plan) == 50
    client = ComfyClient(comfy.url)
    rss, tally = {}, {"valid ok": 0, "invalid 400": 0, "invalid execution_error": 0}
    for i, (what, kind) in enumerate(plan):
        seed = 4000 + i
        if what == "valid":
            entry = client.run(_soak_valid(kind, seed), timeout=300)
            assert status_str(entry) == "success", f"prompt {i} ({kind}): {describe_failure(entry)}"
            tally["valid ok"] += 1
        else:
            status, body = client.post_prompt_raw(_soak_invalid(kind, seed))
            if status == 200 and not body.get("node_errors"):
                entry = client.wait(body["prompt_id"], timeout=300)
                assert status_str(entry) == "error" and execution_error(entry), \
                    f"prompt {i} ({kind}) was not refused: {status_str(entry)}"
                tally["invalid execution_error"] += 1
            else:
                assert status == 400, (i, kind, status, body)
                tally["invalid 400"] += 1
        if i in (4, 49):
            rss[i] = server_rss(server_alive)
    print("soak:", tally, f"RSS after 5th {rss[4] / 2**20:.0f} MiB, after 50th {rss[49] / 2**20:.0f} MiB")
    assert tally["valid ok"] + tally["invalid 400"] + tally["invalid execution_error"] == 50
    assert abs(rss[49] - rss[4]) <= 0.05 * rss[4], rss
    assert server_alive.alive()


# -- absurd values ----------------------------------------------------------------------------------

def _bounds_cases():
    cam, init = ("4", "CAM"), ("3", "init")

    def stream(node, field, value):
        def make():
            g = small(5000)
            g[node]["inputs"][field] = value
            return g
        return make

    def text_init(field, value):
        def make():
            g = workflow("long_video", 5001)
            g["3"]["inputs"][field] = value
            return g
        return make

    def refine(field, value):
        def make():
            g = refine_graph(seed=5002)
            g["3"]["inputs"][field] = value
            return g
        return make

    def anchor_index(value):
        def make():
            g = small(5003)
            g["7"] = {"class_type": "AnchorFrameAPM", "inputs": {"model": ["1", 0], "frames": ["2", 0], "index": value}}
            g["4"]["inputs"]["anchor"] = ["7", 0]
            return g
        return make

    def metrics(field, value):
        def make():
            g = small(5004)
            del g["6"]  # the metrics node is the only output: ComfyUI would run a valid SaveVideo anyway
            g["8"] = {"class_type": "VideoQualityMetrics", "inputs": {
                "images": ["5", 0], "flow": "dis", "coeff": 9.5, "working_size": 64, "window_start": 8,
                "window_step": 8, field: value}}
            return g
        return make

    P = pytest.param
    return [
        # (graph, node with the error, input, words the answer must hold: the allowed range)
        P(stream(cam[0], "frames_to_add", 10 ** 9), "4", "frames_to_add", ["1 to 100000"], id="frames_to_add=1e9"),
        P(stream(cam[0], "frames_to_add", 0), "4", "frames_to_add", ["1 to 100000"], id="frames_to_add=0"),
        P(stream(cam[0], "steps", 0), "4", "steps", ["min of 1"], id="cam-steps=0"),
        P(stream(cam[0], "guidance", -7.5), "4", "guidance", ["min of 0.0"], id="cam-guidance<0"),
        P(stream(cam[0], "eta", 1.5), "4", "eta", ["max of 1.0"], id="cam-eta>1"),
        P(stream(cam[0], "seed", 2 ** 64), "4", "seed", [f"max of {SEED_MAX}"], id="cam-seed=2^64"),
        P(stream(cam[0], "seed", -1), "4", "seed", ["min of 0"], id="cam-seed<0"),
        P(stream(init[0], "width", 16384), "3", "width", ["64 to 4096"], id="init-width=16384"),
        P(stream(init[0], "height", 16384), "3", "height", ["64 to 4096"], id="init-height=16384"),
        P(stream("5", "fps", 0.0), "5", "fps", ["min of 0.01"], id="fps=0"),
        P(text_init("steps", 0), "3", "steps", ["min of 1"], id="t2v-steps=0"),
        P(text_init("guidance", -1.0), "3", "guidance", ["min of 0.0"], id="t2v-guidance<0"),
        P(text_init("width", 16384), "3", "width", ["64 to 4096"], id="t2v-width=16384"),
        P(anchor_index(10 ** 9), "7", "index", ["max of 100000"], id="anchor-index=1e9"),
        P(refine("steps", 0), "3", "steps", ["1..1000"], id="refine-steps=0"),
        P(refine("strength_step", 1000), "3", "strength_step", ["2..999"], id="refine-strength=1000"),
        P(refine("overlap", 0), "3", "overlap", ["1..chunk-1"], id="refine-overlap=0"),
        P(refine("guidance", -1.0), "3", "guidance", ["min of 0.0"], id="refine-guidance<0"),
        P(refine("rescale", 5.0), "3", "rescale", ["max of 1.0"], id="refine-rescale=5"),
        P(refine("chunk", 10 ** 9), "3", "chunk", ["1024"], id="refine-chunk=1e9"),
        P(refine("seed", 2 ** 64), "3", "seed", [f"max of {SEED_MAX}"], id="refine-seed=2^64"),
        P(metrics("working_size", 10 ** 9), "8", "working_size", ["max of 2048"], id="metrics-size=1e9"),
        P(metrics("coeff", 0.0), "8", "coeff", ["min of 0.001"], id="metrics-coeff=0"),
    ]


@pytest.mark.compat
@pytest.mark.parametrize("make,node,input_name,words", _bounds_cases())
def test_absurd_values_are_refused_at_validation_with_the_range(comfy, make, node, input_name, words):
    rejected_at(comfy, make(), node, input_name, *words)


def test_size_hint_suggests_a_size_in_range(comfy):
    g = small(5010)
    g["3"]["inputs"]["width"] = 16384
    text = rejected_at(comfy, g, "3", "width", "64 to 4096")
    assert "e.g. 16384" not in text and "e.g. 4096" in text, text
