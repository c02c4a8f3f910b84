#!/usr/bin/env bash
# The test command: builds the local environment if needed (tools/bootstrap.sh), then runs every test:
# unit (CPU, tiny models), comfy (a real headless ComfyUI with the pack linked in) and browser (the real
# ComfyUI frontend in headless Chromium). Extra arguments go to pytest, e.g. `bash tools/test.sh tests/unit`.
#
# `bash tools/test.sh --comfy033` runs the second leg alone: the compatibility tests (marker `compat`, in tests/comfy,
# tests/browser and tests/oracle) against
# ComfyUI 0.33.0 with the newest frontend (tools/bootstrap.sh --comfy033). Without ../shared beside the
# repository it prints why it skips and exits 0.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LEG=0.3.75
if [ "${1:-}" = "--comfy033" ]; then LEG=0.33.0; shift; fi
mkdir -p out
if [ "$LEG" = 0.33.0 ]; then
  bash tools/bootstrap.sh --comfy033
  brc=$?
  if [ $brc -eq 3 ]; then
    echo "TESTS SKIPPED: ComfyUI 0.33.0 leg: ../shared/comfyui/ComfyUI-0.33.0.tar.gz is not beside the repository"
    exit 0
  fi
  [ $brc -eq 0 ] || { echo "test.sh: tools/bootstrap.sh --comfy033 failed" >&2; exit 1; }
  VPY="${STREAMINGT2V_VENV_COMFY033:-$ROOT/.venv-comfy033}/bin/python"
  export COMFYUI_PATH="${STREAMINGT2V_COMFY033:-$ROOT/.comfyui-0.33}"
  LOG=out/pytest-comfy033.log
  frontend="$(cat "$(dirname "$(dirname "$VPY")")/.frontend" 2>/dev/null || true)"
  [ -n "$frontend" ] && [ "$frontend" != latest ] && export STREAMINGT2V_EXPECT_FRONTEND="$frontend"
  [ $# -eq 0 ] && set -- -m compat tests/comfy tests/browser tests/oracle
else
  bash tools/bootstrap.sh || { echo "test.sh: tools/bootstrap.sh failed" >&2; exit 1; }
  VPY="$ROOT/.venv/bin/python"
  LOG=out/pytest.log
  [ $# -eq 0 ] && set -- tests
fi
# tests/comfy/test_harness.py checks that the server is the ComfyUI this leg means (unless another is chosen)
if [ "$LEG" = 0.33.0 ] || [ -z "${COMFYUI_PATH:-}${STREAMINGT2V_COMFY:-}" ]; then
  export STREAMINGT2V_EXPECT_COMFYUI="$LEG"
fi
# Two shared cores: one OpenMP thread per process keeps small forwards fast (see the CI recipe).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
start=$(date +%s)
"$VPY" -m pytest -q -rfEs --durations=15 "$@" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
secs=$(( $(date +%s) - start ))
summary="$(grep -E '(passed|failed|errors?|skipped|no tests ran).* in [0-9.]+s' "$LOG" | tail -1 | tr -d '=' | sed 's/^ *//;s/ *$//')"
tag="TESTS"; [ "$LEG" = 0.33.0 ] && tag="TESTS (ComfyUI 0.33.0)"
case $rc in
  0) echo "$tag PASSED: ${summary:-?} (pytest ${secs} s)";;
  5) echo "$tag FAILED: pytest collected no tests (exit 5) from: $*"; rc=1;;
  *) echo "$tag FAILED: ${summary:-pytest exit $rc} (pytest exit $rc, ${secs} s; log: $LOG)";;
esac
exit $rc
