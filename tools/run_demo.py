"""The main job, headless: a real ComfyUI with this pack linked in runs workflows/long_video_api.json
(text -> first chunk -> CAM/APM streaming -> ChunkAssembler -> SaveVideo) and the mp4's path is printed.

    bash tools/demo.sh [--frames N] [--prompt TEXT] [--steps N] [--seed N] [--models DIR]

Weights: --models DIR (or $STREAMINGT2V_MODELS) names a ComfyUI-style models folder holding
streamingt2v/ (the StreamingT2V checkpoint) and diffusion_models/ (the ModelScope T2V UNet). Without it,
./demo_out/models is used if it holds a StreamingT2V checkpoint; otherwise a tiny random-weight model is
built, whose frames are noise that only prove the pipeline runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a script: the repository root makes `tests.support` importable
from tests.support.comfy_client import (ComfyClient, ComfyServer, ServerError, combo_options, describe_failure,  # noqa: E402
                          output_files, read_video_info, status_str, tiny_models_key,
                          write_extra_model_paths)

WEIGHT_EXT = {".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft"}
CHUNK_FRAMES, NEW_PER_CHUNK = 16, 8
TINY_BANNER = """
************************************************************************************************
 No real weights configured: using a TINY RANDOM-WEIGHT model built on the spot.
 Its frames are NOISE. They only prove that the whole pipeline (ComfyUI, the nodes, the
 streaming loop, the video writer) runs end to end. For real videos, put the weights in a
 models folder (see README.md, "Weights") and pass --models DIR or set STREAMINGT2V_MODELS.
************************************************************************************************
"""


def has_weights(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    return any(p.suffix.lower() in WEIGHT_EXT for p in folder.rglob("*") if p.is_file())


def resolve_models(args) -> tuple[Path, bool]:
    """(models dir, real?) Real weights win; otherwise the tiny model (built once under demo_out)."""
    chosen = args.models or os.environ.get("STREAMINGT2V_MODELS")
    if chosen:
        d = Path(chosen).expanduser().resolve()
        if not has_weights(d / "streamingt2v"):
            sys.exit(f"--models {d}: no StreamingT2V checkpoint in {d / 'streamingt2v'} "
                     "(expected streaming_t2v.ckpt, a .safetensors or a converted folder; see README.md)")
        if not has_weights(d / "diffusion_models"):
            sys.exit(f"--models {d}: no ModelScope T2V UNet in {d / 'diffusion_models'} (see README.md)")
        return d, True
    local = args.out / "models"
    if has_weights(local / "streamingt2v") and has_weights(local / "diffusion_models"):
        return local.resolve(), True
    tiny = (args.out / "models_tiny").resolve()
    stamp, key = tiny / ".complete", tiny_models_key()
    if not stamp.exists() or stamp.read_text() != key:
        shutil.rmtree(tiny, ignore_errors=True)
        print("building the tiny random-weight models ...", flush=True)
        subprocess.run([sys.executable, str(REPO / "tools" / "make_tiny_models.py"), str(tiny)], check=True,
                       cwd=str(REPO), env=dict(os.environ, OMP_NUM_THREADS="1"))
        stamp.write_text(key)
    return tiny, False


def pick(options: list[str], current: str, prefer: tuple[str, ...]) -> str:
    if current in options:
        return current
    for word in prefer:
        for o in options:
            if word in o.lower():
                return o
    return options[0]


def configure(graph: dict, info: dict, args) -> list[str]:
    """Point the workflow at the server's model files and apply the command-line choices."""
    notes = []
    for nid, node in graph.items():
        ct, inputs = node["class_type"], node["inputs"]
        if ct == "LoadStreamingT2V":
            opts = combo_options(info[ct], "ckpt_name")
            if not opts:
                sys.exit("the server lists no StreamingT2V checkpoint in models/streamingt2v")
            inputs["ckpt_name"] = args.ckpt or pick(opts, inputs["ckpt_name"], ("streaming_t2v", "streamingt2v"))
            notes.append(f"StreamingT2V checkpoint: {inputs['ckpt_name']}")
        elif ct == "LoadModelScopeT2V":
            opts = combo_options(info[ct], "unet_name")
            if not opts:
                sys.exit("the server lists no ModelScope UNet in models/diffusion_models")
            inputs["unet_name"] = args.unet or pick(opts, inputs["unet_name"],
                                                    ("text-to-video", "modelscope", "unet"))
            notes.append(f"ModelScope T2V UNet: {inputs['unet_name']}")
        elif ct == "LoadStreamingT2VRefiner":
            opts = combo_options(info[ct], "refiner_name")
            if not opts:
                sys.exit("the workflow refines, but the server lists no refiner in models/streamingt2v_refiner "
                         "(see README.md)")
            inputs["refiner_name"] = pick(opts, inputs["refiner_name"], ("video-to-video", "vid2vid"))
            notes.append(f"refiner: {inputs['refiner_name']}")
        elif ct == "CAMExtendChunk" and args.frames is not None:
            inputs["frames_to_add"] = args.frames - CHUNK_FRAMES
        if args.prompt is not None and "prompt" in inputs and isinstance(inputs["prompt"], str):
            inputs["prompt"] = args.prompt
        if args.steps is not None and "steps" in inputs:
            inputs["steps"] = args.steps
        if args.seed is not None and "seed" in inputs:
            inputs["seed"] = args.seed
    return notes


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, help="length of the video: 16 frames of the first chunk plus 8 per "
                                               "CAM chunk (rounded up to whole chunks); workflow default 80")
    ap.add_argument("--prompt", help="the prompt (workflow default: 'A cat running on the street')")
    ap.add_argument("--steps", type=int, help="steps of every sampling node: per chunk for the first chunk "
                                               "and CAM (official 50), solver steps for the refiner (30)")
    ap.add_argument("--seed", type=int, help="seed (official: 33)")
    ap.add_argument("--models", help="a models folder with streamingt2v/ and diffusion_models/ "
                                     "(default: $STREAMINGT2V_MODELS, then ./demo_out/models, else a tiny model)")
    ap.add_argument("--ckpt", help="file name in models/streamingt2v to use")
    ap.add_argument("--unet", help="file name in models/diffusion_models to use")
    ap.add_argument("--workflow", type=Path, default=REPO / "workflows" / "long_video_api.json",
                    help="an API-format workflow, e.g. workflows/refine_video_api.json (adds the refiner)")
    ap.add_argument("--out", type=Path, default=REPO / "demo_out")
    ap.add_argument("--timeout", type=float, default=6 * 3600, help="seconds to wait for the video")
    ap.add_argument("--threads", type=int, help="CPU threads of the server (default: 1 for the tiny model, "
                                                "where more threads only contend, else every core)")
    args = ap.parse_args(argv)
    if args.frames is not None and args.frames <= CHUNK_FRAMES:
        ap.error(f"--frames {args.frames}: the first chunk alone has {CHUNK_FRAMES} frames; ask for more "
                 f"(each CAM chunk adds {NEW_PER_CHUNK})")
    if args.steps is not None and args.steps < 1:
        ap.error("--steps must be at least 1")
    if args.prompt is not None and not args.prompt.strip():
        ap.error("--prompt is empty")

    # SIGTERM as Ctrl-C, so the server we started is always stopped
    signal.signal(signal.SIGTERM, _raise_interrupt)
    t0 = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    graph = json.loads(args.workflow.read_text())
    models_dir, real = resolve_models(args)
    if not real:
        print(TINY_BANNER, flush=True)
    else:
        print(f"using the weights in {models_dir}", flush=True)

    base = (args.out / "comfyui").resolve()
    base.mkdir(parents=True, exist_ok=True)
    yaml_path = base / "extra_model_paths.yaml"
    write_extra_model_paths(yaml_path, models_dir)
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    threads = args.threads or ((os.cpu_count() or 1) if real else 1)
    server = ComfyServer(base, extra_model_paths=yaml_path, threads=threads, cpu=not cuda)
    print(f"starting ComfyUI ({server.comfy_dir}) on {server.url}, base dir {base} ...", flush=True)
    try:
        server.start()
    except ServerError as e:
        print(e, file=sys.stderr)
        return 1
    try:
        client = ComfyClient(server.url)
        info = {ct: client.object_info(ct) for ct in {n["class_type"] for n in graph.values()}}
        missing = [ct for ct, i in info.items() if not i]
        if missing:
            print(f"the server does not know these nodes: {missing}\n{server.log_tail()}", file=sys.stderr)
            return 1
        for note in configure(graph, info, args):
            print(note)
        with client.listen() as ws:
            prompt_id = client.post_prompt(graph)
            print(f"queued prompt {prompt_id}; running (log: {server.log_path}) ...", flush=True)
            entry, last = None, 0.0
            deadline = time.monotonic() + args.timeout
            while entry is None:
                entry = client.history(prompt_id)
                if entry is None:
                    if time.monotonic() > deadline:
                        client.interrupt(prompt_id)
                        print(f"no video after {args.timeout:.0f} s: interrupted", file=sys.stderr)
                        return 1
                    prog = ws.of_type("progress", prompt_id)
                    if prog and time.monotonic() - last > 10:
                        p = prog[-1]
                        print(f"  node {p.get('node')}: step {p['value']}/{p['max']} "
                              f"({time.monotonic() - t0:.0f} s)", flush=True)
                        last = time.monotonic()
                    time.sleep(0.5)
        if status_str(entry) != "success":
            print("the workflow failed:\n" + describe_failure(entry), file=sys.stderr)
            return 1
        videos = [f for f in output_files(entry) if f["filename"].endswith(".mp4")]
        if not videos:
            print(f"the workflow succeeded but wrote no mp4: {json.dumps(entry.get('outputs'))[:1000]}",
                  file=sys.stderr)
            return 1
        path = (server.output_dir / videos[0].get("subfolder", "") / videos[0]["filename"]).resolve()
        v = read_video_info(path)
        print(f"\nvideo: {path}\n  {v.frames} frames, {v.width}x{v.height}, {v.fps:g} fps; "
              f"wall time {time.monotonic() - t0:.0f} s")
        if not real:
            print("  (tiny random-weight model: the frames are noise; they only prove the pipeline)")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping ComfyUI", file=sys.stderr)
        return 130
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
