"""The cluster probe: a small Ray job that proves a cluster works before 64 GPUs are spent on it.

Run as the Ray job entrypoint (``python -m glmlaunch.probe --nodes N --gpus-per-node G``), it:

1. waits (bounded) until N nodes are alive, then places one bundle per node (STRICT_SPREAD
   placement group, ``G`` GPUs each), so every node runs one probe task;
2. each task reports its hostname, node IP, the GPUs Ray gave it (``CUDA_VISIBLE_DEVICES``) and
   the physical GPUs (``nvidia-smi -L``), and checks that every ``--path`` is readable there;
3. all tasks run one all-reduce together with ``torch.distributed`` (NCCL when the node has
   CUDA GPUs, gloo otherwise), rank 0's node as the rendezvous, and check the sum.

It prints one ``GLMLAUNCH_PROBE {json}`` line per node and a final ``GLMLAUNCH_PROBE_RESULT``
line, and exits 0 only if every node answered, had G GPUs, could read every path and the
collective gave the right sum. This module is also importable; :func:`parse_report` reads the
lines back.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import time

PREFIX = "GLMLAUNCH_PROBE "
RESULT_PREFIX = "GLMLAUNCH_PROBE_RESULT "


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_info(paths: list[str]) -> dict:
    """What one node sees: hostname, IP, GPUs from Ray and from nvidia-smi, path readability."""
    import ray

    info = {
        "hostname": socket.gethostname(),
        "ip": ray.util.get_node_ip_address(),
        "node_id": ray.get_runtime_context().get_node_id()[:12],
        "ray_gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "physical_gpus": 0,
        "gpu_model": "",
        "paths": {},
        "free_port": _free_port(),
    }
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
        gpus = [line for line in out.splitlines() if line.startswith("GPU ")]
        info["physical_gpus"] = len(gpus)
        info["gpu_model"] = gpus[0].split(":", 1)[1].split("(")[0].strip() if gpus else ""
    except (OSError, subprocess.SubprocessError):
        pass
    for p in paths:
        ok = os.access(p, os.R_OK)
        if ok and os.path.isdir(p):
            try:
                os.listdir(p)
            except OSError:
                ok = False
        info["paths"][p] = "readable" if ok else ("missing" if not os.path.exists(p) else "not readable")
    return info


def collective(rank: int, world: int, master_addr: str, master_port: int, timeout_s: float) -> dict:
    """One all-reduce of ``rank + 1`` across ``world`` ranks; returns the backend, sum and time."""
    t0 = time.monotonic()
    try:
        import datetime

        import torch
        import torch.distributed as dist
    except ImportError:
        return {"backend": "none", "ok": None, "error": "torch is not installed: collective skipped"}
    use_nccl = torch.cuda.is_available() and dist.is_nccl_available()
    backend = "nccl" if use_nccl else "gloo"
    try:
        dist.init_process_group(
            backend,
            init_method=f"tcp://{master_addr}:{master_port}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        t = torch.tensor([float(rank + 1)], device="cuda" if use_nccl else "cpu")
        dist.all_reduce(t)
        got = float(t.item())
        dist.destroy_process_group()
    except Exception as e:  # reported, not raised: the driver names the node
        return {"backend": backend, "ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
    want = world * (world + 1) / 2
    return {
        "backend": backend,
        "ok": got == want,
        "sum": got,
        "expected": want,
        "seconds": round(time.monotonic() - t0, 3),
    }


def run_probe(nodes: int, gpus_per_node: int, paths: list[str], timeout_s: float) -> dict:
    """Run the probe inside a Ray job (``ray.init()`` connects to the job's cluster)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    ray.init(log_to_driver=False)
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [n for n in ray.nodes() if n.get("Alive")]
        if len(alive) >= nodes or time.monotonic() > deadline:
            break
        time.sleep(1)
    problems: list[str] = []
    if len(alive) < nodes:
        problems.append(f"only {len(alive)} of {nodes} nodes are alive")
        return {"ok": False, "problems": problems, "nodes": []}
    bundle = {"CPU": 0.01}
    if gpus_per_node:
        bundle["GPU"] = gpus_per_node
    pg = placement_group([dict(bundle) for _ in range(nodes)], strategy="STRICT_SPREAD")
    try:
        ray.get(pg.ready(), timeout=max(1.0, deadline - time.monotonic()))
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        return {
            "ok": False,
            "nodes": [],
            "problems": [
                f"could not place one bundle of {bundle} on each of {nodes} nodes within {timeout_s:.0f} s "
                f"(cluster resources: {ray.cluster_resources()})"
            ],
        }

    def opts(i):
        return {
            "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i),
            "num_cpus": 0.01,
            "num_gpus": gpus_per_node,
        }

    info_task = ray.remote(node_info)
    infos = ray.get(
        [info_task.options(**opts(i)).remote(paths) for i in range(nodes)],
        timeout=max(1.0, deadline - time.monotonic()),
    )
    master, port = infos[0]["ip"], infos[0]["free_port"]
    coll_task = ray.remote(collective)
    colls = ray.get(
        [
            coll_task.options(**opts(i)).remote(
                i, nodes, master, port, max(10.0, deadline - time.monotonic())
            )
            for i in range(nodes)
        ]
    )
    remove_placement_group(pg)
    report = []
    for rank, (info, coll) in enumerate(zip(infos, colls, strict=True)):
        info = {k: v for k, v in info.items() if k != "free_port"}
        info["rank"] = rank
        info["collective"] = coll
        given = len([g for g in info["cuda_visible_devices"].split(",") if g]) or len(info["ray_gpu_ids"])
        info["gpus"] = given
        if gpus_per_node and given != gpus_per_node:
            problems.append(f"{info['hostname']} ({info['ip']}): {given} GPUs, expected {gpus_per_node}")
        if info["physical_gpus"] and info["physical_gpus"] < gpus_per_node:
            problems.append(
                f"{info['hostname']}: nvidia-smi shows {info['physical_gpus']} GPUs, expected {gpus_per_node}"
            )
        for p, state in info["paths"].items():
            if state != "readable":
                problems.append(f"{info['hostname']} ({info['ip']}): {p} is {state}")
        if coll.get("ok") is False:
            problems.append(
                f"{info['hostname']} ({info['ip']}): {coll['backend']} all-reduce failed: {coll.get('error') or coll}"
            )
        report.append(info)
    hosts = {r["ip"] for r in report}
    if len(hosts) != nodes:
        problems.append(f"the {nodes} probe tasks ran on {len(hosts)} distinct nodes")
    return {"ok": not problems, "problems": problems, "nodes": report}


def parse_report(log_text: str) -> dict | None:
    """Read the ``GLMLAUNCH_PROBE_RESULT`` line back from a job log (``None`` if absent)."""
    for line in reversed(log_text.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m glmlaunch.probe", description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, required=True, help="nodes expected")
    ap.add_argument("--gpus-per-node", type=int, default=0, help="GPUs expected on each node")
    ap.add_argument("--path", action="append", default=[], help="a path every node must be able to read")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for nodes and bundles")
    a = ap.parse_args(argv)
    result = run_probe(a.nodes, a.gpus_per_node, a.path, a.timeout)
    for n in result["nodes"]:
        print(PREFIX + json.dumps(n), flush=True)
    for p in result["problems"]:
        print(f"PROBE PROBLEM: {p}", flush=True)
    rows = [
        f"{n['rank']:>4}  {n['hostname']:<16} {n['ip']:<16} {n['gpus']:>4}  {n['collective'].get('backend', '-'):<5} "
        f"{'ok' if n['collective'].get('ok') else ('skipped' if n['collective'].get('ok') is None else 'FAILED')}"
        for n in result["nodes"]
    ]
    print("rank  host             address          GPUs  coll. result", flush=True)
    print("\n".join(rows), flush=True)
    print(
        RESULT_PREFIX
        + json.dumps({"ok": result["ok"], "problems": result["problems"], "nodes": len(result["nodes"])}),
        flush=True,
    )
    print("probe " + ("PASSED" if result["ok"] else "FAILED"), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
