"""Shared fixtures of the unit suite: a fake DNS (no lookups leave the machine), hostfiles in
tmp_path, and a CLI runner whose output is not wrapped at 80 columns."""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glmlaunch import hosts as hosts_mod

REAL_RESOLVE = hosts_mod.resolve

# name -> address of the fake DNS. Slurm-style names included for from_slurm tests.
FAKE_DNS = {
    "localhost": "127.0.0.1",
    **{f"node{i}": f"10.0.0.{i}" for i in range(1, 9)},
    **{f"node{i:02d}": f"10.0.1.{i}" for i in range(1, 12)},
    "gpu-a1": "10.0.2.1",
    "gpu-a2": "10.0.2.2",
    "cpu9": "10.0.3.9",
    "cpu10": "10.0.3.10",
    "cpu11": "10.0.3.11",
    "v6host": "fe80::1",
}

EIGHT_HOSTS = "".join(f"10.0.0.{i} slots=8\n" for i in range(1, 9))
THREE_HOSTS = "".join(f"10.0.0.{i} slots=8\n" for i in range(1, 4))


def fake_resolve(name: str) -> str | None:
    """IP literals as themselves, names from :data:`FAKE_DNS`, anything else unresolvable."""
    try:
        return str(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return FAKE_DNS.get(name)


@pytest.fixture(autouse=True)
def _fake_dns(monkeypatch):
    """Every unit test resolves through the fake DNS (glmlaunch.hosts looks ``resolve`` up when
    called, so the CLI and discover() use it too)."""
    monkeypatch.setattr(hosts_mod, "resolve", fake_resolve)


@pytest.fixture(name="fake_resolve")
def fake_resolve_fixture():
    return fake_resolve


@pytest.fixture
def real_resolve():
    """glmlaunch.hosts.resolve itself (the autouse fixture replaces it in the module)."""
    return REAL_RESOLVE


@pytest.fixture
def write_hostfile(tmp_path: Path):
    def _write(text: str, name: str = "hostfile") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p

    return _write


@pytest.fixture
def hostfile8(write_hostfile) -> Path:
    return write_hostfile(EIGHT_HOSTS, "hostfile8")


@pytest.fixture
def hostfile3(write_hostfile) -> Path:
    return write_hostfile(THREE_HOSTS, "hostfile3")


class Cli:
    """``glmlaunch`` through typer's CliRunner, with a wide console (Rich wraps at 80 columns
    when stdout is not a terminal)."""

    def __init__(self):
        self.runner = CliRunner()

    def __call__(self, *args: str, env: dict | None = None):
        from glmlaunch.cli import app

        return self.runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "1000", **(env or {})})


@pytest.fixture
def cli() -> Cli:
    return Cli()


@pytest.fixture
def no_scontrol(monkeypatch):
    """scontrol absent: node lists are expanded by python-hostlist, GRES is not looked up."""
    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda cmd, *a, **k: None if cmd == "scontrol" else real_which(cmd, *a, **k)
    )
