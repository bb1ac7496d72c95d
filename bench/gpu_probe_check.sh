#!/usr/bin/env bash
# GPU check of the probe's and the preflight's GPU paths, for a machine with >= 2 NVIDIA GPUs and
# PyTorch (no Ray needed): nodeops' inspect (nvidia-smi GPU count, model, processes) and
# probe.collective() as 2 ranks, one GPU each, over NCCL (the way Ray gives each probe task its
# GPUs through CUDA_VISIBLE_DEVICES). Prints JSON; exit 0 when the all-reduce sum is right.
# Usage: bash bench/gpu_probe_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1   # no NVLink multicast
python3 glmlaunch/nodeops.py inspect '{"space": ["/dev/shm", "/tmp"]}'
port=$((20000 + RANDOM % 1000))
code='import importlib.util, json, os, sys
spec = importlib.util.spec_from_file_location("probe", "glmlaunch/probe.py")
probe = importlib.util.module_from_spec(spec); spec.loader.exec_module(probe)
r = probe.collective(int(sys.argv[1]), 2, "127.0.0.1", int(sys.argv[2]), 120.0)
print(json.dumps({"rank": int(sys.argv[1]), "cuda_visible_devices": os.environ["CUDA_VISIBLE_DEVICES"], **r}))
sys.exit(0 if r.get("ok") else 1)'
CUDA_VISIBLE_DEVICES=0 python3 -c "$code" 0 "$port" & a=$!
CUDA_VISIBLE_DEVICES=1 python3 -c "$code" 1 "$port" & b=$!
wait "$a" && wait "$b" && echo "NCCL probe collective: PASSED"
