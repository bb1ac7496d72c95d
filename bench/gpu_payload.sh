#!/usr/bin/env bash
# Build the payload that bench/gpu_launch_check.sh needs on a GPU machine that has PyTorch but
# no Ray, pydantic or network (the lent H200: Python 3.12): .gpu/ray-trim.tar.xz (Ray 2.60.0 for
# cp312 without its Java jars and source maps: ~31 MB instead of a 79 MB wheel, so that one call
# carries it) and .gpu/deps/*.whl (Ray's dashboard/job deps and glmlaunch's, at the versions of
# this checkout's .venv). .gpu/ must be git-ignored (echo /.gpu/ >> .git/info/exclude).
# Usage: bash bench/gpu_payload.sh      (needs network access to PyPI; takes ~4 minutes, mostly xz)
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=".venv/bin/pip"
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64
      --platform manylinux1_x86_64)
# not in the GPU image (its package list: the device tool's KINDS.md), needed by ray[default] and glmlaunch
PKGS="aiohttp-cors colorful opencensus opencensus-context google-api-core google-auth googleapis-common-protos
proto-plus pyasn1 pyasn1-modules opentelemetry-api opentelemetry-sdk opentelemetry-semantic-conventions
opentelemetry-exporter-prometheus opentelemetry-proto deprecated pydantic pydantic-core annotated-types
typing-inspection jsonschema jsonschema-specifications referencing rpds-py smart-open virtualenv distlib
platformdirs python-discovery py-spy tenacity"
specs=()
for p in $PKGS; do specs+=("$p==$($PIP show "$p" | awk '/^Version/{print $2}')"); done
RAY=$($PIP show ray | awk '/^Version/{print $2}')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p .gpu/deps
$PIP download -q --no-deps "${PLAT[@]}" -d .gpu/deps "${specs[@]}"
$PIP download -q --no-deps "${PLAT[@]}" -d "$work" "ray==$RAY"
mkdir "$work/site"
(cd "$work/site" && unzip -q "$work"/ray-*.whl && rm -rf ray/jars && find . -name '*.map' -delete)
tar -C "$work/site" -cf - . | xz -6 -T0 > .gpu/ray-trim.tar.xz
du -sh .gpu/ray-trim.tar.xz .gpu/deps
