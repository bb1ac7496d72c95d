#!/usr/bin/env bash
# Build the SGLang validation venv that glmlaunch's deep SGLang check runs in (deps.md §6):
#   torch==2.13.0 (the local CPU wheel) FIRST, then `pip install --no-deps` of sglang 0.5.23 and the
#   pinned light list in sgl-validate.txt, then glmlaunch itself (--no-deps, editable).
# Never `pip install sglang` with its deps: it pins a CUDA torch 2.14.1 plus several GB of CUDA wheels.
# Idempotent: a venv whose marker matches the requirement list is left as it is (~0 s).
# Usage: bash tests/harness/sglang_venv.sh [VENV]   (default: $GLT_SGLANG_VENV, else <repo>/.venv-sglang)
# Then:  GLMLAUNCH_SGLANG_PYTHON=VENV/bin/python  (glmlaunch.deep.sglang runs SGLang with it)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VENV=${1:-${GLT_SGLANG_VENV:-$REPO/.venv-sglang}}
REQ=$HERE/sgl-validate.txt
MARK=$VENV/.glmlaunch-sglang-complete
T0=$(date +%s.%N)
took() { awk -v a="$T0" -v b="$(date +%s.%N)" -v m="$1" 'BEGIN{printf "[sglang_venv] %s in %.1f s\n", m, b-a}' >&2; }

want=$( (sha256sum "$REQ"; echo "$REPO") | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$MARK" 2>/dev/null)" = "$want" ]; then
  took "$VENV is complete (nothing to do)"
  exit 0
fi

rm -f "$MARK"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# (the filter drops pip's notes about this machine's empty local index folders)
pipi() {
  "$VENV/bin/pip" install -q --disable-pip-version-check "$@" \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
}
# torch first, on its own: the CPU wheel in find-links satisfies ==2.13.0; nothing later may pull a CUDA torch.
pipi torch==2.13.0
pipi --no-deps -r "$REQ"
pipi --no-deps -e "$REPO"
"$VENV/bin/python" - <<'PY'   # the CPU torch stayed, no CUDA wheels came in, sglang is there
from importlib.metadata import distributions, version
v = version("torch")
cuda = sorted(d.metadata["Name"] for d in distributions() if d.metadata["Name"].lower().startswith("nvidia-"))
assert v.endswith("+cpu") and not cuda, f"expected the CPU torch, got torch {v} with {cuda}"
print("[sglang_venv] sglang", version("sglang"), "torch", v)
PY
echo "$want" > "$MARK"
took "built $VENV ($(du -sm "$VENV" | cut -f1) MB)"
