"""The ``glmlaunch`` command line: a thin shell over the library.

Every command turns its options into library calls, prints what they return (tables, plans,
progress) and maps :class:`~glmlaunch.errors.GlmlaunchError` to a message and an exit code.
Exit codes: 0 ok, 1 a check or the job failed, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .errors import CheckFailed, Finding, GlmlaunchError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    help="Launch miles GSPO/GRPO training of GLM-4.5 on a Ray cluster, from an MPI hostfile or a Slurm allocation.",
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

DEFAULT_RECIPE = "local-probe"

HostfileOpt = Annotated[str | None, typer.Option("--hostfile", "-H", help="MPI hostfile (default /root/mpi_rack_hostfile, or the Slurm allocation)")]
NodesOpt = Annotated[int | None, typer.Option("--nodes", help="Render for N placeholder nodes instead of a hostfile")]
GpusOpt = Annotated[int | None, typer.Option("--gpus-per-node", help="GPUs per node when the hostfile has no slots")]
HeadOpt = Annotated[str | None, typer.Option("--head", help="The head node (default: the first host)")]
LocalOpt = Annotated[bool, typer.Option("--local", help="Run on this machine alone (loopback)")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a recipe field: --set parallelism.tp=4")]


def _fail(e: GlmlaunchError, code: int = 2) -> None:
    if isinstance(e, CheckFailed):
        print_findings(e.findings)
        err.print(f"[bold red]error:[/] {len([f for f in e.findings if f.severity == 'error'])} check(s) failed")
        if e.hint:
            err.print(f"[yellow]fix:[/] {e.hint}")
        raise typer.Exit(1)
    err.print("[bold red]error:[/] " + _esc(e.message), soft_wrap=True)
    if e.hint:
        err.print("[yellow]fix:[/] " + _esc(e.hint), soft_wrap=True)
    raise typer.Exit(code)


def _esc(s: str) -> str:
    from rich.markup import escape

    return escape(s)


def print_findings(findings: list[Finding], title: str = "checks") -> None:
    """A table on a terminal; one line per finding otherwise (logs, pipes, tests)."""
    if not findings:
        out.print(f"[green]✓[/] all {_esc(title)} passed")
        return
    if not out.is_terminal:
        out.print(_esc(title) + ":")
        for f in findings:
            out.print(f"  {f.severity:7} {_esc(str(f))}", soft_wrap=True)
        return
    t = Table(title=title, show_lines=False, expand=False)
    t.add_column("", width=7)
    t.add_column("field", style="cyan", no_wrap=True)
    t.add_column("problem")
    t.add_column("source", style="dim")
    for f in findings:
        sev = "[bold red]error[/]" if f.severity == "error" else "[yellow]warning[/]"
        t.add_row(sev, _esc(f.field), _esc(f.message), _esc(f.source))
    out.print(t)


def _allocation(hostfile, nodes, gpus, head, local, recipe=None):
    from .hosts import discover, placeholder_allocation

    if hostfile is None and nodes is None and not local and recipe is not None:
        import os

        from .hosts import DEFAULT_HOSTFILE

        if not os.path.exists(DEFAULT_HOSTFILE) and not os.environ.get("SLURM_JOB_NODELIST"):
            if recipe.trainer.kind == "probe":
                return discover(local=True, gpus_per_node=gpus)
            n = recipe.cluster.nodes or 1
            from .plan import resolved_gpus_per_node

            g = gpus or recipe.cluster.gpus_per_node or resolved_gpus_per_node(recipe, placeholder_allocation(n, 1)) or 8
            err.print(f"[dim]no hostfile given and {DEFAULT_HOSTFILE} does not exist: using {n} placeholder nodes[/]")
            return placeholder_allocation(n, g)
    return discover(hostfile, nodes=nodes, gpus_per_node=gpus, head=head, local=local)


@app.command()
def hosts(hostfile: HostfileOpt = None, head: HeadOpt = None, gpus_per_node: GpusOpt = None) -> None:
    """Print the parsed hostfile (or Slurm allocation) as a table."""
    from .hosts import discover

    try:
        alloc = discover(hostfile, head=head, gpus_per_node=gpus_per_node)
    except GlmlaunchError as e:
        _fail(e)
    t = Table(title=f"{alloc.num_nodes} nodes from {alloc.origin}")
    for c in ("#", "role", "host", "address", "GPUs (slots)", "ssh", "line"):
        t.add_column(c)
    for i, h in enumerate(alloc.hosts):
        ssh = f"{h.ssh_user or ''}{'@' if h.ssh_user else ''}{':' + str(h.ssh_port) if h.ssh_port else ''}" or "-"
        t.add_row(str(i), "head" if i == 0 else "worker", h.name, h.address, str(h.slots or "-"), ssh, h.source)
    out.print(t)


def _load(recipe: str, sets: list[str] | None):
    from .recipe import load_recipe

    return load_recipe(recipe, sets or [])


@app.command()
def check(
    recipe: Annotated[str, typer.Argument(help="Template name or recipe file")] = DEFAULT_RECIPE,
    hostfile: HostfileOpt = None,
    nodes: NodesOpt = None,
    gpus_per_node: GpusOpt = None,
    head: HeadOpt = None,
    local: LocalOpt = False,
    set_: SetOpt = None,
    deep: Annotated[bool, typer.Option("--deep", help="Also run megatron-core / SGLang / HF config checks")] = False,
) -> None:
    """Check a recipe against the nodes; print every failure (exit 1 if any)."""
    from .plan import build_plan

    try:
        r = _load(recipe, set_)
        alloc = _allocation(hostfile, nodes, gpus_per_node, head, local, r)
        plan = build_plan(r, alloc)
        findings = list(plan.findings)
        if deep:
            from .deepcheck import deep_check, merge_findings

            with err.status("running deep checks (megatron-core, SGLang, HF config)..."):
                findings = merge_findings(findings, deep_check(r, plan))
    except GlmlaunchError as e:
        _fail(e)
    findings.sort(key=lambda f: f.severity != "error")
    print_findings(findings, f"checks of {r.run.name} on {alloc.num_nodes} nodes x {plan.gpus_per_node} GPUs")
    if any(f.severity == "error" for f in findings):
        raise typer.Exit(1)


@app.command()
def render(
    recipe: Annotated[str, typer.Argument(help="Template name or recipe file")] = DEFAULT_RECIPE,
    hostfile: HostfileOpt = None,
    nodes: NodesOpt = None,
    gpus_per_node: GpusOpt = None,
    head: HeadOpt = None,
    local: LocalOpt = False,
    set_: SetOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="bash or json")] = "bash",
    run_id: Annotated[str | None, typer.Option("--run-id", help="Use this run id (default: a new one)")] = None,
) -> None:
    """Print the launch plan: the exact commands (bash) or the plan as JSON."""
    from .plan import build_plan, render_bash, render_json

    if fmt not in ("bash", "json"):
        _fail(GlmlaunchError(f"--format {fmt}: unknown format", "use --format bash or --format json"))
    try:
        r = _load(recipe, set_)
        alloc = _allocation(hostfile, nodes, gpus_per_node, head, local, r)
        plan = build_plan(r, alloc, run_id=run_id)
    except GlmlaunchError as e:
        _fail(e)
    sys.stdout.write(render_json(plan) if fmt == "json" else render_bash(plan))
    if plan.findings:
        n = len(plan.errors)
        err.print(f"[{'red' if n else 'yellow'}]{n} error(s), {len(plan.findings) - n} warning(s): run `glmlaunch check` for details[/]")


@app.command()
def templates() -> None:
    """List the recipe templates."""
    from .recipe import list_templates, load_recipe

    t = Table(title="templates")
    t.add_column("name")
    t.add_column("description")
    for name in list_templates():
        try:
            r = load_recipe(name)
            t.add_row(name, r.run.description or r.model.type)
        except GlmlaunchError as e:
            t.add_row(name, f"[red]{_esc(e.message)}[/]")
    out.print(t)


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(args=argv, prog_name="glmlaunch")
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
