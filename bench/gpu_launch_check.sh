#!/usr/bin/env bash
# glmlaunch on a real GPU: `glmlaunch launch local-probe --local` on one machine, then checks from
# the probe's report (from inside the Ray job) that Ray saw every GPU, that CUDA_VISIBLE_DEVICES is
# what Ray assigned, that the collective ran over NCCL, and after `down` that no process holds a GPU.
# For the lent H200 (Python 3.12 + PyTorch, no Ray, no network): the payload of
# bench/gpu_payload.sh travels in .gpu/ (carry it). Writes $OUT/launch.log and $OUT/gpu-check.json.
# Usage (on the GPU machine, from the repository root): bash bench/gpu_launch_check.sh
set -euo pipefail
OUT=${OUT:-$(mktemp -d)}
# NVLink multicast stays off (the device docs: a program that uses it can take shared GPUs down)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 RAY_USAGE_STATS_ENABLED=0
PY=${PY:-python3}                      # the Python that has PyTorch
V=/tmp/glmlaunch-venv
t0=$(date +%s.%N)
if [ ! -x "$V/bin/ray" ]; then
  "$PY" -m venv "$V"
  SP=$("$V/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  "$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$SP/torch-site.pth"  # PyTorch, CUDA libs
  echo "$PWD" > "$SP/glmlaunch-src.pth"                                                      # this checkout
  tar -C "$SP" -xJf .gpu/ray-trim.tar.xz
  "$V/bin/python3" -m pip install -q --no-index --no-deps --no-compile .gpu/deps/*.whl
  for cmd in ray:ray.scripts.scripts glmlaunch:glmlaunch.cli; do
    printf '#!%s\nimport sys\nfrom %s import main\nsys.exit(main())\n' "$V/bin/python3" "${cmd#*:}" > "$V/bin/${cmd%%:*}"
    chmod +x "$V/bin/${cmd%%:*}"
  done
fi
t1=$(date +%s.%N)
"$V/bin/python3" -c 'import ray, torch, glmlaunch; print("ray", ray.__version__, "torch", torch.__version__, "GPUs", torch.cuda.device_count())'
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
nvidia-smi topo -m > "$OUT/nvidia-smi-topo.txt" 2>&1 || true   # what the NVLink probe reads
export GLMLAUNCH_STATE_DIR=$OUT/state PATH="$V/bin:$PATH"
rc=0
# one GPU has no NVLink: the nodes' probe decides NCCL_NVLS_ENABLE (and must say 0); with several,
# multicast is kept off by setting it, whatever the probe says (the device docs' rule)
nvls=()
[ "$(nvidia-smi -L | wc -l)" -gt 1 ] && nvls=(--set env.vars.NCCL_NVLS_ENABLE=0)
RUNS=$(mktemp -d)   # not under $OUT: a run directory holds the token (mode 600)
"$V/bin/glmlaunch" launch local-probe --local --runs-dir "$RUNS" \
  "${nvls[@]}" --set env.vars.TORCH_SYMM_MEM_DISABLE_MULTICAST=1 --set env.vars.NVSHMEM_DISABLE_NVLS=1 \
  2>&1 | tee "$OUT/launch.log" || rc=$?
t2=$(date +%s.%N)
sleep 2
left=$(nvidia-smi --query-compute-apps=pid,process_name --format=csv,noheader || true)
run=$(ls -d "$RUNS"/*/ | tail -1)

# bring-up on this machine, alternating: `glmlaunch up --local` (preflight, token, head, GPU wait)
# against the limit, a bare `ray start --head` polled until its GPU is registered
ROUNDS=${ROUNDS:-3}
: > "$OUT/bringup.tsv"
for r in $(seq "$ROUNDS"); do
  a=$(date +%s.%N)
  "$V/bin/glmlaunch" up local-probe --local --runs-dir "$RUNS" > "$OUT/up-$r.log" 2>&1
  b=$(date +%s.%N)
  "$V/bin/glmlaunch" down > /dev/null 2>&1
  tmp=$(mktemp -d /tmp/bare-XXXXXX)
  c=$(date +%s.%N)
  setsid "$V/bin/ray" start --head --num-gpus 1 --port 6390 --dashboard-port 8270 --temp-dir "$tmp" \
    --disable-usage-stats --block > "$OUT/bare-$r.log" 2>&1 < /dev/null & pid=$!
  for _ in $(seq 600); do   # at most ~2 minutes
    "$V/bin/ray" status --address 127.0.0.1:6390 2>/dev/null | grep -q '/1.0 GPU' && break; sleep 0.1
  done
  d=$(date +%s.%N)
  kill -TERM -- -"$pid"; wait "$pid" 2>/dev/null || true   # the session this loop started, only
  awk -v a="$a" -v b="$b" -v c="$c" -v d="$d" 'BEGIN{printf "%.2f\t%.2f\n", b-a, d-c}' >> "$OUT/bringup.tsv"
done
cp "$run/manifest.json" "$run/job.log" "$run/plan.json" "$OUT/"
"$V/bin/python3" - "$OUT" "$rc" "$t0" "$t1" "$t2" "$left" <<'PY'
import json, pathlib, sys
from glmlaunch.probe import PREFIX, parse_report
out, rc, t0, t1, t2, left = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:6]), sys.argv[6]
log = pathlib.Path(out, "job.log").read_text()
report = parse_report(log) or {}
nodes = [json.loads(x[len(PREFIX) :]) for x in log.splitlines() if x.startswith(PREFIX)]
checks = {
    "launch exit 0": rc == 0,
    "probe PASSED": report.get("ok") is True and bool(nodes),
    "every node sees its GPUs from Ray": all(n["gpus"] == n["physical_gpus"] and n["gpus"] > 0 for n in nodes),
    "CUDA_VISIBLE_DEVICES set by Ray": all(n["cuda_visible_devices"] != "" for n in nodes),
    "collective over NCCL and ok": all(n["collective"].get("backend") == "nccl" and n["collective"].get("ok") for n in nodes),
    "no GPU process after down": left.strip() == "",
    # NCCL_NVLS_ENABLE comes from the nodes' NVLink probe (nvidia-smi topo -m, as miles'
    # execute_train) unless set; on one GPU there is no NVLink: 0
    "NVLink multicast off in the job's runtime env": json.loads(pathlib.Path(out, "plan.json").read_text())[
        "env_vars"
    ].get("NCCL_NVLS_ENABLE")
    == "0",
}
events = json.loads(pathlib.Path(out, "manifest.json").read_text()).get("events", [])
start = events[0]["t"] if events else 0.0
rounds = [tuple(map(float, x.split())) for x in pathlib.Path(out, "bringup.tsv").read_text().splitlines()]
med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
bring = {"glmlaunch_up_s": [r[0] for r in rounds], "bare_ray_start_s": [r[1] for r in rounds]}
if rounds:
    bring["median_ratio_up_vs_bare"] = round(med([r[0] for r in rounds]) / med([r[1] for r in rounds]), 2)
res = {"checks": checks, "bringup": bring, "passed": all(checks.values()), "setup_s": round(t1 - t0, 1),
       "launch_s": round(t2 - t1, 1), "nodes": nodes,
       "events_s": {ev["event"]: round(ev["t"] - start, 2) for ev in events}, "gpu_processes_after_down": left}
pathlib.Path(out, "gpu-check.json").write_text(json.dumps(res, indent=2))
print(json.dumps(res, indent=2))
sys.exit(0 if res["passed"] else 1)
PY
