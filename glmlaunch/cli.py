"""The ``glmlaunch`` command line: a thin shell over the library.

Every command turns its options into library calls, prints what they return (tables, plans,
progress) and maps :class:`~glmlaunch.errors.GlmlaunchError` to a message and an exit code.
Exit codes: 0 ok, 1 a check or the job failed, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from .errors import CheckFailed, Finding, GlmlaunchError, UsageError, safe_text
from .options import Defaults
from .progress import Reporter

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Launch miles GSPO/GRPO training of GLM-4.5 on a Ray cluster, from an MPI hostfile or a Slurm allocation.",
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

DEFAULT_RECIPE = "local-probe"


def _version(value: bool) -> None:
    if value:
        from . import __version__

        out.print(f"glmlaunch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit")
    ] = False,
) -> None:
    """Launch miles GSPO/GRPO training of GLM-4.5 on a Ray cluster, from an MPI hostfile or a Slurm allocation."""


SSHConfigOpt = Annotated[
    str | None, typer.Option("--ssh-config", help="ssh_config file (default ~/.ssh/config)")
]
SSHUserOpt = Annotated[str | None, typer.Option("--ssh-user", help="SSH login user (overrides ssh_config)")]
SSHKeyOpt = Annotated[str | None, typer.Option("--ssh-key", help="SSH private key file")]
SSHPortOpt = Annotated[int | None, typer.Option("--ssh-port", help="SSH port")]
KnownHostsOpt = Annotated[
    str | None, typer.Option("--known-hosts", help="extra known_hosts file (host keys are checked)")
]
RecipeArg = Annotated[str, typer.Argument(help="Template name or recipe file")]
ConnectTimeoutOpt = Annotated[float, typer.Option("--connect-timeout", help="SSH connect timeout, seconds")]
RunsDirOpt = Annotated[
    str | None,
    typer.Option("--runs-dir", help="where run directories go (default ./runs or $GLMLAUNCH_RUNS_DIR)"),
]
JoinTimeoutOpt = Annotated[
    float, typer.Option("--join-timeout", help="seconds to wait for every node and GPU to join")
]
PortBaseOpt = Annotated[
    int | None, typer.Option("--port-base", help="first of Ray's pinned ports (default 6379)")
]
DashPortOpt = Annotated[
    int | None, typer.Option("--dashboard-port", help="dashboard / job API port (default 8265)")
]
PythonOpt = Annotated[
    str | None, typer.Option("--python", help="Python on the nodes (default: this interpreter)")
]
NetworkOpt = Annotated[
    str | None, typer.Option("--network", help="pick each node's address in this CIDR (multi-NIC hosts)")
]
InterfaceOpt = Annotated[
    str | None,
    typer.Option(
        "--interface", help="pick each node's address on this interface; also sets GLOO/NCCL_SOCKET_IFNAME"
    ),
]
RunOpt = Annotated[str | None, typer.Option("--run", help="run id or directory (default: the current run)")]

HostfileOpt = Annotated[
    str | None,
    typer.Option(
        "--hostfile", "-H", help="MPI hostfile (default /root/mpi_rack_hostfile, or the Slurm allocation)"
    ),
]
NodesOpt = Annotated[
    int | None, typer.Option("--nodes", help="Render for N placeholder nodes instead of a hostfile")
]
GpusOpt = Annotated[
    int | None, typer.Option("--gpus-per-node", help="GPUs per node when the hostfile has no slots")
]
HeadOpt = Annotated[str | None, typer.Option("--head", help="The head node (default: the first host)")]
LocalOpt = Annotated[bool, typer.Option("--local", help="Run on this machine alone (loopback)")]
SparesOpt = Annotated[
    str | None,
    typer.Option(
        "--spares",
        help="a hostfile of spare hosts (never started): a supervised run (--max-restarts) replaces a failed "
        "node by one; hosts of --hostfile beyond cluster.nodes are spares too",
    ),
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a recipe field: --set parallelism.tp=4")
]


def _fail(e: GlmlaunchError) -> NoReturn:
    """One message (and the fix) for an error, then its exit code (:mod:`glmlaunch.errors`)."""
    if isinstance(e, CheckFailed):
        print_findings(e.findings)
        err.print(
            f"[bold red]error:[/] {len([f for f in e.findings if f.severity == 'error'])} check(s) failed"
        )
        if e.hint:
            err.print(f"[yellow]fix:[/] {_esc(e.hint)}", soft_wrap=True)
        raise typer.Exit(e.exit_code)
    err.print("[bold red]error:[/] " + _esc(e.message), soft_wrap=True)
    if e.hint:
        err.print("[yellow]fix:[/] " + _esc(e.hint), soft_wrap=True)
    raise typer.Exit(e.exit_code)


def _esc(s: object) -> str:
    """A user value (host name, path, message) for Rich: control characters written as escapes
    (``\\x1b``: no terminal sequence reaches the terminal), then Rich markup escaped."""
    from rich.markup import escape

    return escape(safe_text(s))


def print_findings(findings: list[Finding], title: str = "checks") -> None:
    """A table on a terminal; one line per finding otherwise (logs, pipes, tests)."""
    if not findings:
        out.print(f"[green]✓[/] all {_esc(title)} passed")
        return
    if not out.is_terminal:
        out.print(_esc(title) + ":")
        for f in findings:
            out.print(f"  {_esc(f.severity):7} {_esc(str(f))}", soft_wrap=True)
        return
    t = Table(title=_esc(title), show_lines=False, expand=False)
    t.add_column("", width=7)
    t.add_column("field", style="cyan", no_wrap=True)
    t.add_column("problem")
    t.add_column("source", style="dim")
    for f in findings:
        sev = {"error": "[bold red]error[/]", "note": "[blue]note[/]"}.get(
            f.severity, "[yellow]warning[/]"
        )  # nothing of the user's
        t.add_row(sev, _esc(f.field), _esc(f.message), _esc(f.source))
    out.print(t)


@app.command()
def hosts(hostfile: HostfileOpt = None, head: HeadOpt = None, gpus_per_node: GpusOpt = None) -> None:
    """Print the parsed hostfile (or Slurm allocation) as a table."""
    from .hosts import discover

    try:
        alloc = discover(hostfile, head=head, gpus_per_node=gpus_per_node)
    except GlmlaunchError as e:
        _fail(e)
    t = Table(title=_esc(f"{alloc.num_nodes} nodes from {alloc.origin}"))
    for c in ("#", "role", "host", "address", "GPUs (slots)", "ssh", "line"):
        t.add_column(c)
    for i, h in enumerate(alloc.hosts):
        ssh = (
            f"{h.ssh_user or ''}{'@' if h.ssh_user else ''}{':' + str(h.ssh_port) if h.ssh_port else ''}"
            or "-"
        )
        t.add_row(
            str(i),
            "head" if i == 0 else "worker",
            _esc(h.name),
            _esc(h.address),
            _esc(h.slots or "-"),
            _esc(ssh),
            _esc(h.source),
        )
    out.print(t)


@app.command()
def check(
    recipe: RecipeArg = DEFAULT_RECIPE,
    hostfile: HostfileOpt = None,
    nodes: NodesOpt = None,
    gpus_per_node: GpusOpt = None,
    head: HeadOpt = None,
    local: LocalOpt = False,
    set_: SetOpt = None,
    deep: Annotated[
        bool,
        typer.Option(
            "--deep",
            help="Also run megatron-core / SGLang / HF config checks, and the "
            "read-only preflight on every node of a real hostfile",
        ),
    ] = False,
    ssh_config: SSHConfigOpt = None,
    ssh_user: SSHUserOpt = None,
    ssh_key: SSHKeyOpt = None,
    ssh_port: SSHPortOpt = None,
    known_hosts: KnownHostsOpt = None,
    connect_timeout: ConnectTimeoutOpt = Defaults.connect_timeout_s,
    port_base: PortBaseOpt = None,
    dashboard_port: DashPortOpt = None,
) -> None:
    """Check a recipe against the nodes; print every failure (exit 1 if any, 2 for bad input)."""
    from .run import plan_launch

    try:
        with err.status("running checks (with --deep: megatron-core, SGLang, HF config, every node)..."):
            p = plan_launch(
                recipe,
                hostfile,
                overrides=set_,
                nodes=nodes,
                gpus_per_node=gpus_per_node,
                head=head,
                local=local,
                deep=deep,
                preflight=deep,
                port_base=port_base,
                dashboard_port=dashboard_port,
                ssh=_ssh(ssh_config, ssh_user, ssh_key, ssh_port, known_hosts, connect_timeout),
            )
    except GlmlaunchError as e:
        _fail(e)
    n = p.alloc.num_nodes
    print_findings(
        p.findings,
        f"checks of {p.recipe.run.name} on {n} node{'s' if n != 1 else ''} x {p.plan.gpus_per_node} GPUs",
    )
    if p.findings.errors:
        err.print(
            "[yellow]fix:[/] change the recipe fields named above (in the file or with --set KEY=VALUE), the "
            "hostfile, or the nodes, and run `glmlaunch check` again",
            soft_wrap=True,
        )
        raise typer.Exit(1)


@app.command()
def render(
    recipe: RecipeArg = DEFAULT_RECIPE,
    hostfile: HostfileOpt = None,
    nodes: NodesOpt = None,
    gpus_per_node: GpusOpt = None,
    head: HeadOpt = None,
    local: LocalOpt = False,
    set_: SetOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="bash or json")] = "bash",
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Use this run id (default: a new one)")
    ] = None,
    port_base: PortBaseOpt = None,
    dashboard_port: DashPortOpt = None,
    python: PythonOpt = None,
) -> None:
    """Print the launch plan: the exact commands (bash) or the plan as JSON."""
    from .render import render_bash, render_json
    from .run import plan_launch

    try:
        if fmt not in ("bash", "json"):
            raise UsageError(f"--format {fmt}: unknown format", "use --format bash or --format json")
        p = plan_launch(
            recipe,
            hostfile,
            overrides=set_,
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            head=head,
            local=local,
            run_id=run_id,
            port_base=port_base,
            dashboard_port=dashboard_port,
            python=python,
        )
    except GlmlaunchError as e:
        _fail(e)
    sys.stdout.write(render_json(p.plan) if fmt == "json" else render_bash(p.plan))
    if p.findings:
        n = len(p.findings.errors)
        err.print(
            f"[{'red' if n else 'yellow'}]{n} error(s), {len(p.findings) - n} warning(s): run `glmlaunch check` for details[/]"
        )


class RichReporter(Reporter):
    """Progress for people: a line per step and per host, and the trainer's log as it comes."""

    def __init__(self, console: Console | None = None):
        self.c = console or err
        self.t0: dict[str, float] = {}

    def step(self, name, total=None):
        import time

        self.t0[name] = time.monotonic()
        self.c.print(f"[bold cyan]▶[/] {_esc(name)}", soft_wrap=True)

    def host(self, step, host, state, detail=""):
        mark = {"ok": "[green]✓[/]", "failed": "[red]✗[/]"}.get(state, "[yellow]…[/]")
        self.c.print(f"   {mark} {_esc(host)} [dim]{_esc(detail)}[/]", soft_wrap=True)

    def done(self, name, ok=True, detail=""):
        mark = "[green]✓[/]" if ok else "[red]✗[/]"
        self.c.print(f"{mark} {_esc(name)} [dim]{_esc(detail)}[/]", soft_wrap=True)

    def findings(self, title, findings):
        print_findings(findings, title)

    def progress(self, step, what, done, total, rate=None):
        import time

        now = time.monotonic()
        key = f"{step}:{what}"
        finished = total is not None and done >= total
        if not finished and now - self.t0.get(key, 0.0) < 5:  # a line every 5 s at most
            return
        self.t0[key] = now
        size = f"{done / 2**30:.2f}" + (f"/{total / 2**30:.2f}" if total else "") + " GiB"
        speed = f", {rate / 2**20:.1f} MiB/s" if rate else ""
        self.c.print(f"   [cyan]↓[/] {_esc(what)} [dim]{_esc(size + speed)}[/]", soft_wrap=True)

    def log_line(self, text):
        sys.stdout.write(text)
        sys.stdout.flush()


def _ssh(ssh_config, ssh_user, ssh_key, ssh_port, known_hosts, connect_timeout):
    from .options import SSHOptions

    return SSHOptions(
        ssh_config=ssh_config,
        user=ssh_user,
        key=ssh_key,
        port=ssh_port,
        known_hosts=known_hosts,
        connect_timeout=connect_timeout,
    )


def print_status(run) -> None:
    """The run's nodes as a table (when it is up), then its jobs and its directory."""
    st = run.status()
    title = _esc(f"run {run.run_id}: {run.plan.recipe} — {run.plan.dashboard_url}")
    if st.cluster is None:  # nothing to ask the nodes
        out.print(f"{title}: {_esc(st.state)}", soft_wrap=True)
    else:
        t = Table(title=title)
        for c in ("host", "role", "address", "Ray node", "GPUs", "ray start process"):
            t.add_column(c)
        for h, v in st.cluster.nodes.items():
            alive = "[green]alive[/]" if v["alive"] else "[red]not alive[/]"
            proc = {True: "[green]running[/]", False: "[red]exited[/]", None: "-"}[v["process"]]
            if not v.get("reachable", True):
                proc = "[red]unreachable[/]"
            gpus = "-" if v["gpus"] is None else f"{v['gpus']:g}"
            t.add_row(_esc(h), _esc(v["role"]), _esc(v["address"]), alive, _esc(gpus), proc)
        out.print(t)
        for p in st.cluster.problems:
            err.print(f"[yellow]note:[/] {_esc(p)}")
        for h, why in st.cluster.unreachable.items():
            err.print(f"[red]unreachable:[/] {_esc(h)}: {_esc(why)}", soft_wrap=True)
    for j in st.jobs:
        out.print(
            _esc(
                f"job {j.submission_id}: {j.status}"
                + (f" (exit code {j.exit_code})" if j.exit_code is not None else "")
            ),
            soft_wrap=True,
        )
    for a in st.attempts:
        res = a.status + (f" (exit code {a.exit_code})" if a.exit_code is not None else "")
        why = f"; {a.cause}: {a.detail}" if a.cause and a.cause != "none" else ""
        hosts = f" [{', '.join(a.hosts)}]" if a.hosts else ""
        out.print(
            _esc(
                f"attempt {a.number}: {res or 'running'}{why}{hosts}; nodes {', '.join(a.nodes)}"
                + "".join(f" ({b} replaced by spare {sp})" for b, sp in a.replaced.items())
                + f"; {a.resume_note}"
                + ("; restarted" if a.restarted else "")
            ),
            soft_wrap=True,
        )
    if st.spares:
        out.print(_esc("spares (not started): " + ", ".join(st.spares)), soft_wrap=True)
    for h, why in st.excluded.items():
        out.print(f"[red]excluded:[/] {_esc(h)}: {_esc(why)}", soft_wrap=True)
    out.print(f"run directory: {_esc(run.path or '-')}", soft_wrap=True)


@app.command()
def up(
    recipe: RecipeArg = DEFAULT_RECIPE,
    hostfile: HostfileOpt = None,
    head: HeadOpt = None,
    gpus_per_node: GpusOpt = None,
    local: LocalOpt = False,
    set_: SetOpt = None,
    ssh_config: SSHConfigOpt = None,
    ssh_user: SSHUserOpt = None,
    ssh_key: SSHKeyOpt = None,
    ssh_port: SSHPortOpt = None,
    known_hosts: KnownHostsOpt = None,
    connect_timeout: ConnectTimeoutOpt = Defaults.connect_timeout_s,
    runs_dir: RunsDirOpt = None,
    join_timeout: JoinTimeoutOpt = Defaults.join_timeout_s,
    port_base: PortBaseOpt = None,
    dashboard_port: DashPortOpt = None,
    python: PythonOpt = None,
    network: NetworkOpt = None,
    interface: InterfaceOpt = None,
    spares: SparesOpt = None,
) -> None:
    """Start the Ray cluster (head, then every worker) and return once every node and GPU joined."""
    from . import run as runs

    try:
        r = runs.up(
            recipe,
            hostfile,
            overrides=set_ or [],
            local=local,
            head=head,
            gpus_per_node=gpus_per_node,
            ssh=_ssh(ssh_config, ssh_user, ssh_key, ssh_port, known_hosts, connect_timeout),
            runs_dir=runs_dir,
            reporter=RichReporter(),
            join_timeout_s=join_timeout,
            port_base=port_base,
            dashboard_port=dashboard_port,
            python=python,
            network=network,
            interface=interface,
            spares=spares,
        )
        print_status(r)
    except GlmlaunchError as e:
        _fail(e)
    out.print(
        "next: [bold]glmlaunch submit[/] (the recipe's job), [bold]glmlaunch status[/], [bold]glmlaunch down[/]"
    )


@app.command()
def launch(
    recipe: RecipeArg = DEFAULT_RECIPE,
    hostfile: HostfileOpt = None,
    head: HeadOpt = None,
    gpus_per_node: GpusOpt = None,
    local: LocalOpt = False,
    set_: SetOpt = None,
    ssh_config: SSHConfigOpt = None,
    ssh_user: SSHUserOpt = None,
    ssh_key: SSHKeyOpt = None,
    ssh_port: SSHPortOpt = None,
    known_hosts: KnownHostsOpt = None,
    connect_timeout: ConnectTimeoutOpt = Defaults.connect_timeout_s,
    runs_dir: RunsDirOpt = None,
    join_timeout: JoinTimeoutOpt = Defaults.join_timeout_s,
    port_base: PortBaseOpt = None,
    dashboard_port: DashPortOpt = None,
    python: PythonOpt = None,
    network: NetworkOpt = None,
    interface: InterfaceOpt = None,
    spares: SparesOpt = None,
    keep: Annotated[bool, typer.Option("--keep", help="leave the cluster up after the job")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan (bash) and stop")] = False,
    no_deep_check: Annotated[
        bool, typer.Option("--no-deep-check", help="skip the megatron-core/SGLang checks")
    ] = False,
    prepare: Annotated[
        bool,
        typer.Option(
            "--prepare", help="run `glmlaunch prepare` first (each step skipped when verified already)"
        ),
    ] = False,
    max_restarts: Annotated[
        int,
        typer.Option(
            "--max-restarts",
            min=0,
            help="restart after a cluster failure (node lost, raylet/GCS/driver dead, hang) up to N times, "
            "resuming from the run's newest complete checkpoint",
        ),
    ] = 0,
    restart_on: Annotated[
        str,
        typer.Option(
            "--restart-on", help="cluster: only cluster causes; any: also a trainer that failed by itself"
        ),
    ] = "cluster",
    hang_timeout: Annotated[
        float | None,
        typer.Option("--hang-timeout", min=1, help="seconds without a new job log line that count as a hang"),
    ] = None,
    backoff: Annotated[
        float,
        typer.Option(
            "--backoff",
            min=0,
            help="seconds to wait before the first restart (doubled for each next one, at most "
            f"{Defaults.restart_backoff_max_s:g} s)",
        ),
    ] = Defaults.restart_backoff_s,
) -> None:
    """Check, start the cluster, submit the trainer, follow its log, tear down; exit with the
    trainer's status. Without arguments: the cluster probe on this machine."""
    from . import run as runs
    from .render import render_bash

    kw = dict(
        overrides=set_ or [],
        local=local,
        head=head,
        gpus_per_node=gpus_per_node,
        port_base=port_base,
        dashboard_port=dashboard_port,
        python=python,
        network=network,
        interface=interface,
        spares=spares,
        ssh=_ssh(ssh_config, ssh_user, ssh_key, ssh_port, known_hosts, connect_timeout),
    )
    try:
        if dry_run:
            res = runs.launch(
                recipe,
                hostfile,
                dry_run=True,
                deep=not no_deep_check,
                join_timeout_s=join_timeout,
                max_restarts=max_restarts,
                restart_on=restart_on,
                hang_timeout_s=hang_timeout,
                backoff_base_s=backoff,
                **kw,
            )
            sys.stdout.write(render_bash(res.plan))
            if res.findings:
                print_findings(res.findings)
            return
        res = runs.launch(
            recipe,
            hostfile,
            keep=keep,
            deep=not no_deep_check,
            prepare=prepare,
            reporter=RichReporter(),
            runs_dir=runs_dir,
            join_timeout_s=join_timeout,
            max_restarts=max_restarts,
            restart_on=restart_on,
            hang_timeout_s=hang_timeout,
            backoff_base_s=backoff,
            **kw,
        )
    except GlmlaunchError as e:
        _fail(e)
    job = res.job
    assert job is not None  # launch() followed the job to its end
    color = "green" if res.ok else "red"
    code = "" if job.exit_code is None else f"exit code {job.exit_code}, "
    err.print(
        f"[{color}]{_esc(f'job {job.submission_id}: {job.status}')}[/] ({_esc(code)}{job.duration_s:.0f} s)"
        + (f"; run directory {_esc(res.run_dir)}" if res.run_dir else ""),
        soft_wrap=True,
    )
    if keep:
        err.print("the cluster is still up: [bold]glmlaunch status[/], [bold]glmlaunch down[/]")
    if not res.ok:
        raise typer.Exit(job.exit_code if job.exit_code not in (None, 0) else 1)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def print_prepare(res) -> None:
    """A prepare result: the dry run's files and free space, or each step with its nodes."""
    if res.dry_run:
        st = res.steps[0] if res.steps and res.steps[0].step == "download" else None
        data = st.data if st else {}
        for item in data.get("items", []):
            t = Table(
                title=_esc(
                    f"{item['repo_type']} {item['repo_id']} @ {item['commit'][:12]} -> {item['local_dir']}"
                )
            )
            for c in ("file", "size", "to fetch"):
                t.add_column(c)
            for f in item["files"]:
                t.add_row(
                    _esc(f["path"]),
                    _size(f["size"]),
                    "yes" if f["will_download"] else "[dim]no (complete)[/]",
                )
            out.print(t)
            free = data.get("free_bytes", {}).get(item["local_dir"])
            fetch = sum(f["size"] for f in item["files"] if f["will_download"])
            out.print(
                _esc(f"  to fetch: {_size(fetch)} of {_size(sum(f['size'] for f in item['files']))}; "
                     f"free at the target: {_size(free) if free is not None else '?'}"),
                soft_wrap=True,
            )  # fmt: skip
        return
    t = Table(title=_esc(f"prepare {res.recipe}"))
    for c in ("step", "node / item", "state", "detail"):
        t.add_column(c)
    color = {"done": "green", "skipped": "cyan", "failed": "red", "not run": "dim"}
    for st in res.steps:
        t.add_row(_esc(st.step), "", f"[{color[st.state]}]{st.state}[/]", _esc(st.detail))
        for n in st.nodes:
            t.add_row("", _esc(n.node), f"[{color[n.state]}]{n.state}[/]", _esc(n.detail))
    out.print(t)
    if res.run_dir:
        out.print(f"run directory: {_esc(res.run_dir)}", soft_wrap=True)


@app.command()
def prepare(
    recipe: RecipeArg,
    hostfile: HostfileOpt = None,
    head: HeadOpt = None,
    gpus_per_node: GpusOpt = None,
    local: LocalOpt = False,
    set_: SetOpt = None,
    steps: Annotated[
        str | None,
        typer.Option(
            "--steps",
            help="comma-separated subset of: download, verify-download, shared-fs, convert, verify-convert, local-copy",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="list the files to fetch, their sizes and the free space; touch nothing"
        ),
    ] = False,
    ssh_config: SSHConfigOpt = None,
    ssh_user: SSHUserOpt = None,
    ssh_key: SSHKeyOpt = None,
    ssh_port: SSHPortOpt = None,
    known_hosts: KnownHostsOpt = None,
    connect_timeout: ConnectTimeoutOpt = Defaults.connect_timeout_s,
    runs_dir: RunsDirOpt = None,
    python: PythonOpt = None,
    network: NetworkOpt = None,
    interface: InterfaceOpt = None,
    convert_port: Annotated[
        int | None,
        typer.Option("--convert-port", help="the conversion's torchrun master port (default 23456)"),
    ] = None,
) -> None:
    """Download, verify, convert (HF -> torch_dist with torchrun on the training nodes) and copy
    to the nodes' local disks; each step skipped when its verified output is there."""
    from .prep import prepare as run_prepare

    try:
        res = run_prepare(
            recipe,
            hostfile,
            overrides=set_ or [],
            steps=steps,
            dry_run=dry_run,
            local=local,
            head=head,
            gpus_per_node=gpus_per_node,
            python=python,
            network=network,
            interface=interface,
            ssh=_ssh(ssh_config, ssh_user, ssh_key, ssh_port, known_hosts, connect_timeout),
            runs_dir=runs_dir,
            reporter=RichReporter(),
            convert_port=convert_port,
        )
    except GlmlaunchError as e:
        partial = getattr(e, "result", None)
        if partial is not None:
            print_prepare(partial)
        _fail(e)
    print_prepare(res)


@app.command()
def submit(run: RunOpt = None, follow: Annotated[bool, typer.Option("--follow/--no-follow")] = True) -> None:
    """Submit the run's trainer (its plan) to the cluster started by `glmlaunch up`."""
    from .run import Run

    try:
        res = Run.open(run, reporter=RichReporter()).submit(follow=follow)
    except GlmlaunchError as e:
        _fail(e)
    if res is not None:
        err.print(_esc(f"job {res.submission_id}: {res.status} (exit code {res.exit_code})"), soft_wrap=True)
        if not res.ok:
            raise typer.Exit(res.exit_code if res.exit_code not in (None, 0) else 1)


@app.command()
def status(run: RunOpt = None) -> None:
    """Nodes, GPUs, the job and its state, for the current run (or --run)."""
    from .run import Run

    try:
        print_status(Run.open(run))
    except GlmlaunchError as e:
        _fail(e)


@app.command()
def bundle(run: RunOpt = None) -> None:
    """Write a crash bundle of the current run (or --run) now: the job log tail, the node table,
    each node's Ray log tails, the manifest and the job's argv and env (secrets redacted), into
    runs/<id>/bundle-<time>/ and its .tar.gz."""
    import time

    from . import bundle as bundles
    from .run import Run

    try:
        r = Run.open(run)
        assert r.run_dir is not None  # an opened run has its directory
        name = f"bundle-{time.strftime('%Y%m%d-%H%M%S')}"
        d = bundles.collect(r, len(r.run_dir.manifest.attempts), name=name)
        r.transport.close()
    except GlmlaunchError as e:
        _fail(e)
    assert d is not None
    out.print(f"bundle: {_esc(d)} and {_esc(d.parent / (d.name + '.tar.gz'))}", soft_wrap=True)
    summary = d / "summary.txt"
    if summary.is_file():
        missing = summary.read_text().partition("not collected:")[2].strip()
        if missing:
            err.print("[yellow]not collected:[/] " + _esc(missing), soft_wrap=True)


@app.command()
def logs(
    run: RunOpt = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="follow until the job ends")] = False,
) -> None:
    """Print the trainer's log (with --follow, until the job ends)."""
    from .run import Run

    def show(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        r = Run.open(run)
        if not r.state.cluster_up:
            err.print(
                f"[yellow]run {_esc(r.run_id)} is {r.state}: showing the log kept in its run directory[/]"
            )
        r.logs(follow=follow, on_text=show)
    except GlmlaunchError as e:
        _fail(e)


@app.command()
def down(
    run: RunOpt = None,
    purge: Annotated[
        bool, typer.Option("--purge", help="also remove each node's state dir (Ray's logs of this run)")
    ] = False,
) -> None:
    """Stop the run's job (with its grace period) and exactly the Ray processes this run started."""
    from .run import Run

    try:
        r = Run.open(run, reporter=RichReporter())
        res = r.down(purge=purge)
    except GlmlaunchError as e:
        _fail(e)
    bad = {h: v for h, v in res.items() if "error" in v or v.get("left")}
    if bad:
        for h, v in bad.items():
            err.print(f"[red]✗[/] {_esc(h)}: {_esc(str(v.get('error') or v.get('left')))}")
        raise typer.Exit(1)
    out.print(f"run {_esc(r.run_id)} is down ({len(res)} nodes)", soft_wrap=True)


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
            t.add_row(_esc(name), _esc(r.run.description or r.model.type))
        except GlmlaunchError as e:
            t.add_row(_esc(name), f"[red]{_esc(e.message)}[/]")
    out.print(t)


def _on_sigterm(signum, frame):
    # SIGTERM (kill, scancel, a CI timeout) is handled like Ctrl-C: the library's cleanup paths
    # (stop the job with its grace period, roll back / tear down the cluster) run before exiting
    raise KeyboardInterrupt


def _setup_logging() -> None:
    """glmlaunch's own warnings go to the terminal; everything the libraries log (paramiko's
    tracebacks for an unreachable host, Ray's job SDK) goes to ``glmlaunch.log`` in the state
    directory (``$GLMLAUNCH_STATE_DIR``, default ``~/.local/state/glmlaunch``), never to the
    terminal."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console.addFilter(lambda r: r.name.startswith("glmlaunch"))
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(console)
    try:
        from .runs import check_state_dir

        fh = logging.FileHandler(check_state_dir() / "glmlaunch.log")
    except (GlmlaunchError, OSError):
        return
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(fh)


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    import signal

    args = sys.argv[1:] if argv is None else argv
    if not ({"-h", "--help", "--version"} & set(args)) and args:  # help runs no library code:
        _setup_logging()  # its state dir (glmlaunch.runs, pydantic) is not imported for it
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        app(args=argv, prog_name="glmlaunch")
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]")
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":
    main()
