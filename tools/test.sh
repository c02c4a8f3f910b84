#!/usr/bin/env bash
# The test command: builds the local environment if needed (tools/bootstrap.sh), then runs every test:
# unit (CPU, tiny models), comfy (a real headless ComfyUI with the pack linked in) and browser (the real
# ComfyUI frontend in headless Chromium). Extra arguments go to pytest, e.g. `bash tools/test.sh tests/unit`.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/bootstrap.sh || { echo "test.sh: tools/bootstrap.sh failed" >&2; exit 1; }
# Two shared cores: one OpenMP thread per process keeps small forwards fast (see the CI recipe).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
mkdir -p out
[ $# -eq 0 ] && set -- tests
start=$(date +%s)
.venv/bin/python -m pytest -q -rfEs --durations=15 "$@" 2>&1 | tee out/pytest.log
rc=${PIPESTATUS[0]}
secs=$(( $(date +%s) - start ))
summary="$(grep -E '(passed|failed|errors?|skipped|no tests ran).* in [0-9.]+s' out/pytest.log | tail -1 | tr -d '=' | sed 's/^ *//;s/ *$//')"
case $rc in
  0) echo "TESTS PASSED: ${summary:-?} (pytest ${secs} s)";;
  5) echo "TESTS FAILED: pytest collected no tests (exit 5) from: $*"; rc=1;;
  *) echo "TESTS FAILED: ${summary:-pytest exit $rc} (pytest exit $rc, ${secs} s; log: out/pytest.log)";;
esac
exit $rc
