#!/usr/bin/env bash
# The test command: builds the local environment if needed (tools/bootstrap.sh), then runs every test:
# unit (CPU, tiny models), comfy (a real headless ComfyUI with the pack linked in) and browser (the real
# ComfyUI frontend in headless Chromium), as two pytest processes side by side (tests/comfy + tests/browser;
# the other folders). Extra arguments go to one pytest process instead, e.g. `bash tools/test.sh tests/unit`.
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
  SPLIT=0
  [ $# -eq 0 ] && SPLIT=1  # no arguments: the whole suite, in two halves
fi
# tests/comfy/test_harness.py checks that the server is the ComfyUI this leg means (unless another is chosen)
if [ "$LEG" = 0.33.0 ] || [ -z "${COMFYUI_PATH:-}${STREAMINGT2V_COMFY:-}" ]; then
  export STREAMINGT2V_EXPECT_COMFYUI="$LEG"
fi
# Two shared cores: one OpenMP thread per process keeps small forwards fast (see the CI recipe).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
tag="TESTS"; [ "$LEG" = 0.33.0 ] && tag="TESTS (ComfyUI 0.33.0)"

summary_of() {  # the last pytest summary line of a log
  grep -E '(passed|failed|errors?|skipped|no tests ran).* in [0-9.]+s' "$1" | tail -1 | tr -d '=' | sed 's/^ *//;s/ *$//'
}
verdict() {  # tag, rc, seconds, log, pytest arguments...: one line, and the rc to exit with
  local t=$1 r=$2 s=$3 log=$4; shift 4
  local sum; sum="$(summary_of "$log")"
  case $r in
    0) echo "$t PASSED: ${sum:-?} (pytest ${s} s)";;
    5) echo "$t FAILED: pytest collected no tests (exit 5) from: $*"; r=1;;
    *) echo "$t FAILED: ${sum:-pytest exit $r} (pytest exit $r, ${s} s; log: $log)";;
  esac
  return $r
}

start=$(date +%s)
if [ "${SPLIT:-0}" = 1 ]; then
  # The whole suite as two pytest processes side by side (each is single-threaded; the machine has two
  # cores): the real-server and browser tests in one, every other test folder (unit, oracle) in the other.
  CORE=()
  for d in tests/*/; do
    case "$(basename "$d")" in comfy|browser|support|data|__pycache__) ;; *) CORE+=("${d%/}");; esac
  done
  for f in tests/test_*.py; do [ -e "$f" ] && CORE+=("$f"); done
  CORE_LOG=out/pytest-core.log
  ( "$VPY" -m pytest -q -rfEs --durations=15 "${CORE[@]}" > "$CORE_LOG" 2>&1; echo $? > out/.pytest-core.rc ) &
  core_pid=$!
  "$VPY" -m pytest -q -rfEs --durations=15 tests/comfy tests/browser 2>&1 | tee "$LOG"
  rc=${PIPESTATUS[0]}
  secs=$(( $(date +%s) - start ))
  wait $core_pid
  rc_core=$(cat out/.pytest-core.rc 2>/dev/null || echo 1)
  secs_core=$(( $(date +%s) - start ))
  echo "=== the other half (${CORE[*]}), run beside it: $CORE_LOG"
  cat "$CORE_LOG"
  verdict "$tag (tests/comfy tests/browser)" "$rc" "$secs" "$LOG" tests/comfy tests/browser; rc=$?
  verdict "$tag (${CORE[*]})" "$rc_core" "$secs_core" "$CORE_LOG" "${CORE[@]}"; rc_core=$?
  total=$(( $(date +%s) - start ))
  if [ $rc -eq 0 ] && [ $rc_core -eq 0 ]; then
    echo "$tag PASSED: both halves (${total} s)"; exit 0
  fi
  echo "$tag FAILED (${total} s)"; exit 1
fi
"$VPY" -m pytest -q -rfEs --durations=15 "$@" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
secs=$(( $(date +%s) - start ))
verdict "$tag" "$rc" "$secs" "$LOG" "$@"
exit $?
