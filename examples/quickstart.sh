#!/usr/bin/env bash
# The main job on the embedded default: a one-machine Ray cluster (loopback) and the small
# probe recipe. Sets up .venv (CPU torch first, so nothing pulls a CUDA build), installs
# glmlaunch with Ray, Fabric and submitit, then runs `glmlaunch launch --local`, which checks,
# starts the head, submits the cluster probe, follows it and tears everything down.
# Usage (repo root, as root on Debian with Python 3.11): bash examples/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv 2>/dev/null || {
    rm -rf .venv
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    python3 -m venv .venv
  }
fi
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check -e '.[all]'
exec .venv/bin/glmlaunch launch local-probe --local --runs-dir runs "$@"
