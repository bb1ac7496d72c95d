"""``glmlaunch prepare``: everything a run needs before it can start, as one idempotent,
resumable, verified step (issue 11; the seed leaves it to the user, miles' Python launcher
automates it without verifying anything: scripts/run_glm45_355b_a32b.py:42-98 (miles@31f1ca961a94)).

Steps (:data:`~glmlaunch.prep.result.STEPS`), each skipped when its verified output is there:

1. ``download`` (:mod:`.download`): the model, its FP8 copy for FP8 rollout, and the task's
   datasets, with huggingface_hub into ``run.base_dir``, on this machine (one download into the
   shared directory, never one per node);
2. ``verify-download``: every file of the pinned revision with the Hub's size and LFS sha256, and
   the HF ``config.json`` against the model args (:func:`glmlaunch.deep.hfconfig.check_hf_config`);
3. ``shared-fs``: a marker written in ``base_dir`` on the head is read on every other node and
   here (:meth:`glmlaunch.cluster.RayCluster.check_shared`);
4. ``convert`` (:mod:`.convert`): HF -> ``torch_dist`` with ``torchrun`` on the training nodes,
   into ``<ref_load>.partial``;
5. ``verify-convert`` (:mod:`.verify`): the output read with torch's distributed-checkpoint
   reader, every layer's tensors present; only then renamed to ``checkpoint.ref_load``;
6. ``local-copy``: the HF checkpoint and the ``torch_dist`` output copied to
   ``checkpoint.model_local_dir`` on every node, in parallel (``nodeops copy_tree``).

Library code: raises, never prints; progress goes to a :class:`~glmlaunch.progress.Reporter`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import Findings, GlmlaunchError, PrepareError, UsageError
from ..options import Defaults, SSHOptions
from ..progress import NullReporter, Reporter
from ..recipe import Recipe
from ..resolve import paths
from ..transport import Transport
from . import download as dl
from . import verify as vf
from .result import STEPS, NodeOutcome, PrepareResult, StepResult

PATH_FIELDS = ("run.", "checkpoint.", "rollout.prompt_data", "eval.prompt_data")
"""The findings that stop a prepare before anything is fetched: where the files go (paths)."""

__all__ = ["STEPS", "NodeOutcome", "PrepareResult", "StepResult", "prepare"]

NODE_STEPS = {"shared-fs", "convert", "local-copy"}


def _steps(steps: list[str] | str | None) -> list[str]:
    if steps is None:
        return list(STEPS)
    if isinstance(steps, str):
        steps = [x for x in steps.replace(",", " ").split() if x]
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        raise UsageError(
            f"--steps {','.join(steps)}: unknown step(s) {', '.join(unknown) or '(none given)'}",
            f"use some of: {','.join(STEPS)}",
        )
    if "convert" in steps and "verify-convert" not in steps:
        steps = [*steps, "verify-convert"]  # a conversion's output is renamed only once verified
    return [s for s in STEPS if s in steps]


def _local_copy_files(path: str) -> dict[str, int]:
    """What a node-local copy of ``path`` holds: every file, huggingface_hub's ``.cache`` left out."""
    return {k: v for k, v in vf.listing(path).items() if not k.startswith(".cache/")}


def prepare(
    recipe: str | Path | dict | Recipe,
    hostfile: str | None = None,
    *,
    overrides: list[str] | None = None,
    steps: list[str] | str | None = None,
    dry_run: bool = False,
    local: bool = False,
    head: str | None = None,
    gpus_per_node: int | None = None,
    python: str | None = None,
    network: str | None = None,
    interface: str | None = None,
    env: dict | None = None,
    ssh: SSHOptions | None = None,
    transport: Transport | None = None,
    runs_dir: str | None = None,
    reporter: Reporter | None = None,
    convert_port: int | None = None,
    convert_timeout_s: float = Defaults.convert_timeout_s,
    copy_timeout_s: float = Defaults.copy_timeout_s,
) -> PrepareResult:
    """Prepare ``recipe``'s checkpoints and data on the nodes (see the module for the steps).

    Nodes: the one discovery policy (:func:`glmlaunch.run.plan_launch`: ``local``, ``hostfile``,
    the Slurm allocation, ``/root/mpi_rack_hostfile`` ...); ``steps``: a subset of
    :data:`STEPS` (names or one comma-separated string; ``convert`` brings ``verify-convert``
    with it: its output is renamed only once verified); ``dry_run``: list every file that would
    be fetched with its size and the free space at its target, touch nothing, and raise when the
    space is short. ``convert_port``: the conversion's master port (default
    :attr:`glmlaunch.plan.PortPlan.convert`). Times in seconds.

    Returns a :class:`PrepareResult` (every step, per node or per item). Raises
    :class:`PrepareError` (its ``result`` attribute holds the :class:`PrepareResult` so far),
    :class:`~glmlaunch.errors.TransportError` for unreachable nodes, :class:`UsageError` /
    ``RecipeError`` / ``HostfileError`` for bad input (nothing touched).
    """
    from ..run import make_transport, plan_launch

    wanted = _steps(steps)
    reporter = reporter or NullReporter()
    on_nodes = bool(NODE_STEPS & set(wanted)) and not dry_run
    p = plan_launch(
        recipe,
        hostfile,
        overrides=overrides,
        local=local,
        head=head,
        gpus_per_node=gpus_per_node,
        python=python,
        network=network,
        interface=interface,
        env=env,
        ssh=ssh,
        transport=transport,
        reporter=reporter,
        startable=on_nodes and transport is None,
    )
    res, r = p.resolved, p.resolved.recipe
    dl.refuse_probe(r)
    # the path checks first: nothing is fetched or converted into a place the run would refuse
    # (the layout checks stay the launch's: a conversion runs on any number of GPUs)
    refused = [f for f in p.findings.errors if f.field.startswith(PATH_FIELDS)]
    if refused:
        Findings(refused).raise_for_errors()
    if convert_port is not None and not (isinstance(convert_port, int) and 0 < convert_port < 65536):
        raise UsageError(
            f"--convert-port {convert_port}: not a TCP port", "pass a port from 1024 to 65535, e.g. 23456"
        )
    plan = p.plan
    if convert_port is not None:
        plan = plan.model_copy(update={"ports": plan.ports.model_copy(update={"convert": convert_port})})
    from .convert import converter_model_args

    items = dl.hub_items(r)
    hf = r.expand(r.checkpoint.hf_checkpoint).rstrip("/")
    save = paths(r)["ref_load"]
    exp = vf.expected_from_args(converter_model_args(res))
    result = PrepareResult(recipe=r.run.name, dry_run=dry_run)
    result.steps = [StepResult(step=s) for s in wanted]

    def fail(step: StepResult, e: GlmlaunchError) -> None:
        step.state = "failed"
        step.detail = e.message.splitlines()[0]
        if isinstance(e, PrepareError) and not step.nodes:
            step.nodes = [NodeOutcome(node=k, state="failed", detail=v) for k, v in e.failures.items()]
        reporter.done(step.step, False, step.detail)

    if dry_run:
        st = result.step("download") if "download" in wanted else StepResult(step="download")
        dry = [dl.plan_item(i) for i in items]
        short = dl.check_space(dry)
        st.data = {
            "items": [x.model_dump() for x in dry],
            "free_bytes": {x.local_dir: dl.free_bytes(x.local_dir) for x in dry},
            "short": short,
        }
        st.detail = f"{sum(x.fetch_bytes for x in dry)} bytes to fetch in {sum(len([f for f in x.files if f.will_download]) for x in dry)} files"
        if short:
            e = PrepareError(
                "not enough free space for the download:\n"
                + "\n".join(f"  - {d}: {why}" for d, why in short.items()),
                short,
                "free space there, or point run.base_dir (or the checkpoint paths) at a larger filesystem",
            )
            fail(st, e)
            e.result = result  # type: ignore[attr-defined]
            raise e
        return result

    from ..runs import RunDir

    rd = RunDir.create(plan.run_id, runs_dir, current=False)
    from ..render import render_json

    rd.write("plan.json", render_json(plan))  # the nodes, addresses and ports this prepare used
    rd.update(recipe=plan.recipe, recipe_source=plan.recipe_source)
    result.run_dir = str(rd.path)
    cluster = None
    if on_nodes:
        from ..cluster import RayCluster

        cluster = RayCluster(
            plan, transport or make_transport(p.alloc, ssh), run_dir=rd, reporter=reporter, recipe=r
        )
    plans: list[dl.ItemPlan] = []
    converted_now = False
    try:
        for st in result.steps:
            reporter.step(f"prepare: {st.step}")
            try:
                if st.step == "download":
                    plans = [dl.plan_item(i) for i in items]
                    todo = []
                    for ip in plans:
                        if dl.is_verified(ip):
                            st.nodes.append(
                                NodeOutcome(
                                    node=ip.repo_id, state="skipped", detail=f"verified at {ip.commit[:12]}"
                                )
                            )
                        else:
                            todo.append(ip)
                    short = dl.check_space(todo)
                    if short:
                        raise PrepareError(
                            "not enough free space for the download:\n"
                            + "\n".join(f"  - {d}: {why}" for d, why in short.items()),
                            short,
                            "free space there, or point run.base_dir (or the checkpoint paths) at a larger filesystem",
                        )
                    for ip in todo:
                        dl.download_item(ip, reporter)
                        st.nodes.append(
                            NodeOutcome(
                                node=ip.repo_id,
                                state="done",
                                detail=f"{ip.fetch_bytes} bytes into {ip.local_dir}",
                            )
                        )
                        reporter.host(st.step, ip.repo_id, "ok", ip.local_dir)
                    st.state = "done" if todo else "skipped"
                elif st.step == "verify-download":
                    plans = plans or [dl.plan_item(i) for i in items]
                    bad = {}
                    for ip in plans:
                        problems = dl.verify_item(ip)
                        if ip.repo_type == "model" and not problems:
                            from ..deep.hfconfig import check_hf_config

                            errs = [
                                f.message
                                for f in check_hf_config(plan.argv, ip.local_dir)
                                if f.severity == "error"
                            ]
                            if errs:
                                problems = {"config.json": "; ".join(errs)}
                        if problems:
                            bad[ip.repo_id] = "; ".join(f"{k}: {v}" for k, v in list(problems.items())[:5])
                            st.nodes.append(
                                NodeOutcome(node=ip.repo_id, state="failed", detail=bad[ip.repo_id])
                            )
                        else:
                            st.nodes.append(
                                NodeOutcome(node=ip.repo_id, state="done", detail=f"{len(ip.files)} files")
                            )
                    if bad:
                        raise PrepareError(
                            "the download does not verify:\n"
                            + "\n".join(f"  - {k}: {v}" for k, v in bad.items()),
                            bad,
                            "run `glmlaunch prepare --steps download,verify-download` again: files that differ are fetched again"
                            " (remove a corrupt file first when its size is right but its sha256 is not)",
                        )
                    st.state = "done"
                elif st.step == "shared-fs":
                    assert cluster is not None
                    bad = cluster.check_shared(r.run.base_dir.rstrip("/"), "run.base_dir", here=True)
                    for n in plan.nodes:
                        st.nodes.append(
                            NodeOutcome(
                                node=n.name,
                                state="failed" if n.name in bad else "done",
                                detail=bad.get(n.name, ""),
                            )
                        )
                    if bad:
                        raise PrepareError(
                            f"run.base_dir = {r.run.base_dir} is not one shared filesystem: "
                            + ", ".join(bad)
                            + " do(es) not see it\n"
                            + "\n".join(f"  - {h}: {why}" for h, why in bad.items()),
                            bad,
                            "mount the same shared filesystem at run.base_dir on every node (and on this machine)",
                        )
                    st.state = "done"
                elif st.step == "convert":
                    assert cluster is not None
                    if vf.is_verified(save, exp):
                        st.state, st.detail = "skipped", f"{save} verified earlier"
                        continue
                    if os.path.lexists(save):
                        found = vf.problems_of(save, exp)
                        if found:
                            raise PrepareError(
                                f"{save} exists and does not verify ({found[0]}"
                                + (f", and {len(found) - 1} more problem(s)" if len(found) > 1 else "")
                                + ")",
                                {save: found[0]},
                                f"move {save} away (it is never overwritten) and run prepare again",
                            )
                        vf.stamp(save, exp)  # converted before (by hand or by miles) and complete
                        st.state, st.detail = "skipped", f"{save} was there and verifies"
                        continue
                    from .convert import PARTIAL, run_conversion

                    partial = save + PARTIAL
                    if os.path.lexists(partial):
                        shutil.rmtree(partial)  # an earlier try's half-written output (glmlaunch's name)
                    st.data = {"save": partial, "hf_checkpoint": hf}
                    st.nodes = run_conversion(
                        cluster,
                        res,
                        hf_checkpoint=hf,
                        save=partial,
                        reporter=reporter,
                        timeout_s=convert_timeout_s,
                    )
                    st.state = "done"
                    converted_now = True
                elif st.step == "verify-convert":
                    from .convert import PARTIAL

                    target = save + PARTIAL if converted_now else save
                    if not converted_now and vf.is_verified(save, exp):
                        st.state, st.detail = "skipped", f"{save} verified earlier"
                        continue
                    vf.verify_torch_dist(target, exp)
                    if converted_now:
                        os.rename(target, save)
                    st.state, st.detail = (
                        "done",
                        f"{save}: {exp.num_layers} layers, {exp.num_experts} experts",
                    )
                elif st.step == "local-copy":
                    local_dir = (
                        r.expand(r.checkpoint.model_local_dir).rstrip("/")
                        if r.checkpoint.model_local_dir
                        else ""
                    )
                    if not local_dir:
                        st.state, st.detail = "skipped", "checkpoint.model_local_dir is unset"
                        continue
                    assert cluster is not None
                    if not vf.is_verified(save, exp):
                        raise PrepareError(
                            f"{save} is not a verified torch_dist checkpoint: nothing to copy to the nodes",
                            {save: "not verified"},
                            "run the conversion first (glmlaunch prepare --steps convert), or the whole prepare",
                        )
                    if not _local_copy_files(hf):
                        raise PrepareError(
                            f"{hf} is empty or missing: nothing to copy to the nodes",
                            {hf: "missing"},
                            "download it first (glmlaunch prepare --steps download,verify-download)",
                        )
                    st.nodes = copy_to_nodes(
                        cluster,
                        r,
                        [hf, save]
                        + ([i.local_dir for i in items if i.field == "checkpoint.hf_checkpoint_fp8"]),
                        local_dir,
                        reporter,
                        copy_timeout_s,
                    )
                    st.state = "done" if any(n.state == "done" for n in st.nodes) else "skipped"
                if st.state in ("done", "skipped"):
                    reporter.done(st.step, True, st.detail)
            except GlmlaunchError as e:
                fail(st, e)
                e.result = result  # type: ignore[attr-defined]
                raise
    finally:
        rd.write("prepare.json", result.model_dump_json(indent=2))
        if cluster is not None:
            cluster.transport.close()
    return result


def copy_to_nodes(
    cluster, recipe: Recipe, sources: list[str], local_dir: str, reporter: Reporter, timeout_s: float
) -> list[NodeOutcome]:
    """Copy each of ``sources`` (verified directories in the shared ``base_dir``) to
    ``<local_dir>/<its name>`` on every node, in parallel (``nodeops copy_tree``: space first,
    temp name, size check, rename, skip what is current). Raises :class:`PrepareError` naming
    each node that failed."""
    copies = [
        {"src": s, "dst": f"{local_dir}/{os.path.basename(s)}", "files": _local_copy_files(s)}
        for s in sources
    ]
    res = cluster._nodeop(
        "copy_tree",
        {n.name: {"copies": copies} for n in cluster.plan.nodes},
        timeout=timeout_s,
        step="local-copy",
    )
    out, bad = [], {}
    for h, (parsed, r) in res.items():
        if parsed is None:
            bad[h] = r.reason()
            out.append(NodeOutcome(node=h, state="failed", detail=bad[h]))
            continue
        failed = {d: v["why"] for d, v in parsed.items() if v["state"] == "failed"}
        if failed:
            bad[h] = "; ".join(f"{d}: {why}" for d, why in failed.items())
            out.append(NodeOutcome(node=h, state="failed", detail=bad[h]))
            reporter.host("local-copy", h, "failed", bad[h])
            continue
        copied = sum(v["bytes"] for v in parsed.values())
        if any(v["state"] == "copied" for v in parsed.values()):
            out.append(NodeOutcome(node=h, state="done", detail=f"{copied} bytes copied"))
        else:
            out.append(NodeOutcome(node=h, state="skipped", detail="already current"))
        detail = out[-1].detail
        reporter.host("local-copy", h, "ok", detail)
    if bad:
        raise PrepareError(
            f"node-local copies to {local_dir} failed on {', '.join(bad)}:\n"
            + "\n".join(f"  - {h}: {why}" for h, why in bad.items()),
            bad,
            "free space on the named nodes (or set checkpoint.model_local_dir elsewhere) and run prepare again: "
            "what was copied is kept",
        )
    return out
