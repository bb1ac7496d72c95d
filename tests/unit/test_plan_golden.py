"""Golden files: the rendered plan (JSON) and bash script of every template.

Allocation: a fixed hostfile of 10.0.0.1 .. 10.0.0.8 with slots=8 (local-probe: 10.0.0.1 .. 3),
written to tmp_path; run_id "golden"; python "/opt/glm/bin/python3".

Two values depend on the machine and are normalised before comparing: the tmp_path of the
hostfile (``<tmp>``) and the repository root (``<repo>``: the recipe's source path, and the
probe's PYTHONPATH, which is the launcher's own package directory).

Regenerate with ``GLMLAUNCH_UPDATE_GOLDEN=1 pytest tests/unit/test_plan_golden.py``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
from planning import checked_plan

import glmlaunch
from glmlaunch.hosts import read_hostfile
from glmlaunch.recipe import list_templates, load_recipe
from glmlaunch.render import render_bash, render_json

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
REPO = Path(glmlaunch.__file__).resolve().parents[1]
UPDATE = os.environ.get("GLMLAUNCH_UPDATE_GOLDEN") == "1"
TEMPLATES = list_templates()
PYTHON = "/opt/glm/bin/python3"


def _hostfile(tmp_path: Path, template: str) -> Path:
    n = 3 if template == "local-probe" else 8
    p = tmp_path / "hostfile"
    p.write_text("".join(f"10.0.0.{i} slots=8\n" for i in range(1, n + 1)))
    return p


def _plan(tmp_path: Path, template: str):
    return checked_plan(
        load_recipe(template),
        read_hostfile(_hostfile(tmp_path, template)),
        run_id="golden",
        python=PYTHON,
        state_nonce="0" * 16,
    )


def _normalise(text: str, tmp_path: Path) -> str:
    pairs = sorted([(str(tmp_path), "<tmp>"), (str(REPO), "<repo>")], key=lambda kv: -len(kv[0]))
    for old, new in pairs:
        text = text.replace(old, new)
    return text


def _compare(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
        return
    assert path.exists(), f"{path} is missing: run GLMLAUNCH_UPDATE_GOLDEN=1 pytest {__file__}"
    want = path.read_text()
    assert text == want, (
        f"{name} differs from the golden file; if the change is intended, regenerate with GLMLAUNCH_UPDATE_GOLDEN=1"
    )


def test_every_template_has_goldens():
    if UPDATE:
        pytest.skip("regenerating")
    names = {p.name for p in GOLDEN.iterdir()}
    assert names == {f"{t}.{ext}" for t in TEMPLATES for ext in ("json", "sh")}


@pytest.mark.parametrize("template", TEMPLATES)
def test_golden_json(template, tmp_path):
    plan = _plan(tmp_path, template)
    text = _normalise(render_json(plan), tmp_path)
    json.loads(text)
    _compare(f"{template}.json", text)


@pytest.mark.parametrize("template", TEMPLATES)
def test_golden_bash(template, tmp_path):
    plan = _plan(tmp_path, template)
    text = _normalise(render_bash(plan), tmp_path)
    _compare(f"{template}.sh", text)


@pytest.mark.parametrize("template", TEMPLATES)
def test_golden_has_nothing_machine_specific(template, tmp_path):
    plan = _plan(tmp_path, template)
    for text in (_normalise(render_json(plan), tmp_path), _normalise(render_bash(plan), tmp_path)):
        for leak in {sys.executable, sys.prefix, str(Path.home()) + "/", socket.gethostname(), "pytest-of-"}:
            if leak and leak not in ("/", "/root/"):
                assert leak not in text, leak
        assert "<repo>" not in text.replace("<repo>/templates/", "").replace('"PYTHONPATH": "<repo>"', "")


def test_repo_dependent_values_are_only_the_known_two(tmp_path):
    """The only machine-dependent values are recipe_source and (probe only) PYTHONPATH."""
    miles = _plan(tmp_path, "glm45-355b-a32b-gspo")
    assert miles.recipe_source == str(REPO / "templates" / "glm45-355b-a32b-gspo.toml")
    assert miles.env_vars["PYTHONPATH"] == "/root/miles:/root/Megatron-LM"
    probe = _plan(tmp_path, "local-probe")
    assert probe.env_vars["PYTHONPATH"] == str(REPO)  # the launcher's package dir: right only on a shared FS


@pytest.mark.parametrize("template", TEMPLATES)
def test_golden_plan_is_clean(template, tmp_path):
    """Every template passes its own checks on its golden allocation, and the plan is pinned by the
    fixed inputs (python, run id, state dir)."""
    plan = _plan(tmp_path, template)
    assert not plan.errors, [str(f) for f in plan.errors]
    assert plan.run_id == "golden" and plan.state_dir == "/tmp/glr-golden-" + "0" * 16
    assert plan.ray_bin == "/opt/glm/bin/ray" and plan.python == PYTHON
    assert plan.head_address == "10.0.0.1" and plan.dashboard_url == "http://10.0.0.1:8265"
    assert [n.role for n in plan.nodes] == ["head"] + ["worker"] * (plan.num_nodes - 1)
