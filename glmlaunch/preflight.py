"""Preflight on every node, in one parallel round before ``ray start``: what each node has
(versions, GPUs, stray GPU/Ray processes, the recipe's files, writable and shared ``--save``,
``/dev/shm`` and disk space, the network interface, the clock) turned into findings.

:func:`requests` builds each node's question; :func:`analyze` turns the answers into
:class:`~glmlaunch.errors.Finding` s, errors first. Nothing here kills anything: stray processes are
reported with their PIDs.
"""

from __future__ import annotations

import os

from .errors import Finding
from .plan import NVLINK_PROBE, LaunchPlan
from .recipe import Recipe
from .resolve import paths

MIN_SHM_GIB = 1.0
MIN_DISK_GIB = 2.0
MAX_SKEW_S = 5.0


def recipe_files(recipe: Recipe | None) -> tuple[list[str], list[str]]:
    """(files every node must read, directories every node must write) for the recipe.

    Sources: ``--hf-checkpoint``'s config.json is read by the driver and every engine; the
    ``--ref-load`` tracker is the initial ``--load`` on every training node
    (miles/utils/arguments.py:3046-3057 (miles@31f1ca961a94)); prompt/eval data are read by the
    RolloutManager, on any node; ``--save`` is written by every training rank
    (docs/rules.md#preflight).
    """
    if recipe is None:
        return [], []
    if recipe.trainer.kind != "miles":
        return [recipe.expand(p) for p in recipe.trainer.probe_paths], []
    cp = tp = paths(recipe)
    files = [
        f"{cp['hf_checkpoint']}/config.json",
        f"{cp['ref_load']}/latest_checkpointed_iteration.txt",
        tp["prompt_data"],
    ]
    if recipe.eval.enabled:
        files.append(tp["eval_data"])
    files += [
        recipe.trainer.miles_dir.rstrip("/") + "/" + recipe.trainer.train_script,
        recipe.trainer.megatron_dir,
    ]
    return files, [cp["save"]] if cp["save"] else []


def requests(plan: LaunchPlan, recipe: Recipe | None, sentinel: str) -> dict[str, dict]:
    """The ``preflight`` node operation's arguments for each node. ``sentinel``: a random nonce of
    this preflight, which each node writes into ``--save`` (nothing of the run's token: the
    arguments are visible in ``ps`` and the sentinel files to whoever reads ``--save``)."""
    files, writable = recipe_files(recipe)
    repos = []
    if recipe is not None and recipe.trainer.kind == "miles":
        repos = [recipe.trainer.miles_dir, recipe.trainer.megatron_dir]
    out = {}
    for n in plan.nodes:
        out[n.name] = {
            "addr": n.address,
            "ports": plan.ports.node_ports(head=n.role == "head"),
            "files": files,
            "writable": writable,
            "sentinel": sentinel,
            "space": ["/dev/shm", os.path.dirname(plan.state_dir) or "/tmp"],
            "interface": recipe.env.interface if recipe is not None else "",
            "repos": repos,
        }
    return out


def analyze(
    plan: LaunchPlan,
    recipe: Recipe | None,
    answers: dict[str, dict],
    sent_at: float,
    received_at: float | None = None,
) -> list[Finding]:
    """Findings from every node's answer (``answers[host] = {"ports":..., "inspect":...}``);
    ``sent_at``/``received_at`` bound the round (launcher clock, seconds) for the clock check."""
    import time

    received_at = received_at or time.time()
    out: list[Finding] = []
    add = lambda field, msg, sev="error", rule="", src="docs/rules.md#preflight": out.append(  # noqa: E731
        Finding(field, msg, rule, src, sev)
    )
    insp = {h: a["inspect"] for h, a in answers.items()}

    for key, what in (
        ("python", "Python"),
        ("ray", "Ray"),
        ("torch", "torch"),
        ("sglang", "SGLang"),
        ("megatron_core", "megatron-core"),
    ):
        vals = {h: i.get(key) for h, i in insp.items()}
        if key == "ray" and any(v is None for v in vals.values()):
            missing = [h for h, v in vals.items() if v is None]
            add(
                "nodes",
                f"Ray is not installed for {plan.python} on {', '.join(missing)}",
                rule="Ray on every node",
            )
        distinct = {v for v in vals.values() if v is not None}
        if len(distinct) > 1:
            by = ", ".join(f"{h}={v}" for h, v in sorted(vals.items()))
            sev = "error" if key in ("python", "ray") else "warning"
            add("nodes", f"{what} versions differ across nodes: {by}", sev, f"same {what} everywhere")
    repos: dict[str, dict[str, str | None]] = {}
    for h, i in insp.items():
        for p, commit in (i.get("repos") or {}).items():
            repos.setdefault(p, {})[h] = commit
    for p, by_host in repos.items():
        if len({c for c in by_host.values()}) > 1:
            add(
                "trainer.miles_dir",
                f"{p} is at different commits: " + ", ".join(f"{h}={c}" for h, c in by_host.items()),
                rule="same miles/Megatron commit on every node",
            )

    if recipe is not None and recipe.trainer.kind == "miles" and recipe.cluster.hardware != "cpu":
        for h, i in insp.items():
            if i.get("gpus", 0) != plan.gpus_per_node:
                add(
                    "cluster.gpus_per_node",
                    f"{h}: nvidia-smi shows {i.get('gpus', 0)} GPUs, the plan expects {plan.gpus_per_node}",
                    rule="physical GPUs == GPUs per node",
                    src="docs/rules.md#gpus-per-node",
                )
        models = {m for i in insp.values() for m in i.get("gpu_models", [])}
        if len(models) > 1:
            add("nodes", f"nodes have different GPU models: {sorted(models)}", rule="one GPU model")
    for var, probe in plan.probed_env.items():  # NCCL_NVLS_ENABLE: one value for every node
        if probe == NVLINK_PROBE:
            without = sorted(h for h, i in insp.items() if not i.get("nvlink"))
            if without and len(without) < len(insp):
                add(
                    f"env.vars.{var}",
                    f"{', '.join(without)} show no NVLink and the other nodes do: {var}=0 for the whole job "
                    f"(set env.vars.{var} to choose)",
                    "warning",
                    "one NVLink answer for every node",
                    "docs/fidelity.md#probed-env",
                )
    for h, i in insp.items():
        for gp in i.get("gpu_processes") or []:
            add("nodes", f"{h}: a process already uses a GPU: {gp} (not touched)", "warning", "idle GPUs")
        for s in i.get("strays", []):
            add(
                "nodes",
                f"{h}: {s['comm']} (pid {s['pid']}) is already running: {s['cmd']} (not touched)",
                "warning",
                "no leftover Ray/SGLang",
            )
        for f, state in (i.get("files") or {}).items():
            if state != "readable":
                add("files", f"{h}: {f} is {state}", rule="recipe files readable on every node")
        for d, state in (i.get("writable") or {}).items():
            if state != "ok":
                add("checkpoint.save", f"{h}: {d} is {state}", rule="--save writable on every node")
        shm = (i.get("free_gib") or {}).get("/dev/shm")
        if shm is not None and shm < MIN_SHM_GIB:
            add(
                "nodes",
                f"{h}: only {shm} GiB free in /dev/shm (Ray's object store uses it)",
                "warning",
                "/dev/shm space",
            )
        for p, free in (i.get("free_gib") or {}).items():
            if p != "/dev/shm" and free is not None and free < MIN_DISK_GIB:
                add(
                    "nodes",
                    f"{h}: only {free} GiB free under {p} (Ray logs and spill)",
                    "warning",
                    "disk space",
                )
        if i.get("interface") is False and recipe is not None:
            add(
                "env.interface",
                f"{h}: network interface '{recipe.env.interface}' does not exist",
                rule="GLOO/NCCL_SOCKET_IFNAME exists on every node",
            )
        t = i.get("time", sent_at)  # the node answered between sent_at and received_at
        skew = max(0.0, sent_at - t, t - received_at)
        if skew > MAX_SKEW_S:
            add("nodes", f"{h}: clock differs from the launcher's by {skew:.0f} s", "warning", "clock skew")
    return sorted(out, key=lambda f: f.severity != "error")
