#!/usr/bin/env python
"""Per-host phases of one bring-up, from the run manifest's events (glmlaunch/runs.py
``Manifest.events``), drawn to bench/bringup-timeline.png with matplotlib when it is importable,
else as an ASCII chart; a table of every phase (seconds from the command) is printed either way.

Phases (the events glmlaunch records): plan+checks (command -> run directory created), connect
and preflight (``phase`` step ``preflight``: each host's start, SSH connect time and duration),
token (step ``token``), head start and worker start (step ``ray-start``: nodeops ``start``, which
includes its 2 s settle), head answers (the head's job API is up), joined (``ready``: when each
host's GPUs were first seen), submit (``submitted``), first job log line (``first log line``),
down (step ``down``).

Usage:
  flock /tmp/glt-it.lock python bench/timeline.py [--hosts N]    # runs `glmlaunch launch local-probe`
  python bench/timeline.py --manifest runs/<id>/manifest.json      # reads a run made earlier
Reads JSON only (no glmlaunch import), so it runs under any Python; for the picture, one with
matplotlib (``pip install '.[bench]'``, or a venv of its own: see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
COLORS = {
    "plan+checks": "#999999",
    "connect": "#1f77b4",
    "preflight": "#aec7e8",
    "token": "#9467bd",
    "head start": "#d62728",
    "head wait": "#ff9896",
    "worker start": "#2ca02c",
    "join wait": "#98df8a",
    "submit": "#ff7f0e",
    "job start": "#ffbb78",
    "job": "#dddddd",
    "down": "#8c564b",
}
LETTER = {
    "plan+checks": "=",
    "connect": "c",
    "preflight": "p",
    "token": "t",
    "head start": "H",
    "head wait": "h",
    "worker start": "W",
    "join wait": "j",
    "submit": "S",
    "job start": "s",
    "job": ".",
    "down": "D",
}


def phases(m: dict, t_cmd: float | None) -> tuple[float, list[tuple[str, str, float, float]]]:
    """(t0, [(host, phase, start, end)]) with times in seconds from t0 (the command, else the
    run directory's creation)."""
    t0 = t_cmd or m["created"]
    head = next((h["name"] for h in m.get("hosts", [])), "")
    hosts = [h["name"] for h in m.get("hosts", [])]
    out: list[tuple[str, str, float, float]] = []
    if t_cmd:
        out += [(h, "plan+checks", 0.0, m["created"] - t0) for h in hosts]
    starts_seen = 0
    end_of: dict[str, float] = {}
    for ev in m.get("events", []):
        e, t = ev["event"], ev["t"] - t0
        if e == "phase":
            for h, r in ev["hosts"].items():
                s = r["start"] - t0
                if ev["step"] == "preflight":
                    out.append((h, "connect", s, s + r["connect_s"]))
                    out.append((h, "preflight", s + r["connect_s"], s + r["seconds"]))
                elif ev["step"] == "ray-start":
                    out.append((h, "head start" if starts_seen == 0 else "worker start", s, s + r["seconds"]))
                else:
                    out.append((h, ev["step"], s, s + r["seconds"]))
                end_of[h] = s + r["seconds"]
            if ev["step"] == "ray-start":
                starts_seen += 1
        elif e == "head answers":
            out.append((ev["host"], "head wait", end_of.get(ev["host"], t), t))
            end_of[ev["host"]] = t
        elif e == "ready":
            for h, tj in ev.get("joined", {}).items():
                out.append((h, "join wait", end_of.get(h, t), tj - t0))
                end_of[h] = tj - t0
            end_of["ready"] = t
        elif e == "submitted":
            out.append((head, "submit", end_of.get("ready", t), t))
            end_of["submitted"] = t
        elif e == "first log line":
            out.append((head, "job start", end_of.get("submitted", t), t))
            end_of["first"] = t
    downs = [p for p in out if p[1] == "down"]
    if downs and "first" in end_of:
        out.append((head, "job", end_of["first"], min(p[2] for p in downs)))
    return t0, out


def table(rows: list[tuple[str, str, float, float]]) -> str:
    lines = [f"{'host':<6} {'phase':<13} {'start s':>8} {'end s':>8} {'took s':>7}"]
    for h, p, s, e in sorted(rows, key=lambda r: (r[2], r[0])):
        lines.append(f"{h:<6} {p:<13} {s:8.2f} {e:8.2f} {e - s:7.2f}")
    return "\n".join(lines)


def ascii_chart(rows: list[tuple[str, str, float, float]], width: int = 100) -> str:
    end = max(e for *_, e in rows)
    scale = width / end
    hosts = list(dict.fromkeys(h for h, *_ in rows))
    out = [f"one column = {1 / scale:.2f} s; " + " ".join(f"{v}={k}" for k, v in LETTER.items())]
    for h in hosts:
        line = [" "] * (width + 1)
        for hh, p, s, e in rows:
            if hh == h:
                for i in range(int(s * scale), max(int(e * scale), int(s * scale) + 1)):
                    line[min(i, width)] = LETTER.get(p, "?")
        out.append(f"{h:<5}|{''.join(line)}|")
    return "\n".join(out)


def draw(rows: list[tuple[str, str, float, float]], png: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    hosts = list(dict.fromkeys(h for h, *_ in rows))
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.6 * len(hosts)))
    used = set()
    for i, h in enumerate(hosts):
        for hh, p, s, e in rows:
            if hh == h:
                ax.barh(i, max(e - s, 0.02), left=s, color=COLORS.get(p, "k"), label=None if p in used else p)
                used.add(p)
    ax.set_yticks(range(len(hosts)), hosts)
    ax.invert_yaxis()
    ax.set_xlabel("seconds from the command")
    ax.set_title(title)
    ax.legend(
        ncol=6, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.35 - 0.05 * (4 - min(len(hosts), 4)))
    )
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    return True


def launch(n: int) -> tuple[float, Path]:
    sys.path.insert(0, str(HERE))
    import _hosts as H

    hosts = H.HOSTS[:n]
    work = Path(tempfile.mkdtemp(prefix="glmlaunch-bench-timeline-"))
    runs = work / "runs"
    runs.mkdir()
    hf = H.hostfile(hosts, work)
    t_cmd = time.time()
    try:
        H.glmlaunch(
            "launch", "local-probe", "--hostfile", hf, "--ssh-config", H.SSH_CONFIG, "--runs-dir", str(runs)
        )
    finally:
        if any(runs.iterdir()):
            rd = H.only_run(runs)
            state = json.loads((rd / "manifest.json").read_text())
            if state["state"] not in ("down", "created"):
                H.glmlaunch_down(rd, hosts)
    return t_cmd, H.only_run(runs) / "manifest.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", type=Path)
    ap.add_argument("--hosts", type=int, default=0, help="hosts of the test cluster (default: all)")
    ap.add_argument("--png", type=Path, default=HERE / "bringup-timeline.png")
    a = ap.parse_args()
    t_cmd = None
    if a.manifest:
        path = a.manifest
    else:
        sys.path.insert(0, str(HERE))
        import _hosts as H

        t_cmd, path = launch(a.hosts or len(H.HOSTS))
    m = json.loads(path.read_text())
    _, rows = phases(m, t_cmd)
    print(f"{path}\n")
    print(table(rows))
    print()
    print(ascii_chart(rows))
    title = f"glmlaunch launch local-probe on {len(m.get('hosts', []))} hosts ({m['run_id']})"
    if draw(rows, a.png, title):
        print(f"\nwrote {a.png}")
    else:
        print("\n(matplotlib not importable: ASCII chart only)")


if __name__ == "__main__":
    main()
