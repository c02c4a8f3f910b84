#!/usr/bin/env bash
# The main job on a fresh machine: builds the local environment (torch, the pack's dependencies and a real
# ComfyUI, in .venv/.comfyui), then runs the long-video workflow headless and prints the mp4's path.
# Options: see `bash tools/demo.sh --help` (tools/run_demo.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/bootstrap.sh
exec .venv/bin/python tools/run_demo.py "$@"
