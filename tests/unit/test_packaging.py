"""A wheel carries what the launcher reads at run time: every recipe template (``glmlaunch/templates``;
the checkout's top-level ``templates/`` is a symlink to it) and the bash script's template.

The wheel is built from a copy of the checkout (without build outputs), with no build isolation,
so that nothing is fetched and no ``build/`` or ``*.egg-info`` is left in the source tree.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import glmlaunch
from glmlaunch.render import BASH_TEMPLATE

REPO = Path(glmlaunch.__file__).resolve().parents[1]
PACKAGE_TEMPLATES = REPO / "glmlaunch" / "templates"

pytestmark = pytest.mark.skipif(
    not (REPO / "setup.cfg").is_file(), reason="glmlaunch is not run from a checkout"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(
        REPO,
        src,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv*",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            "runs",
            ".pytest_cache",
            ".ruff_cache",
        ),
    )
    out = tmp / "dist"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = out.glob("glmlaunch-*.whl")
    with zipfile.ZipFile(whl) as zf:
        yield zf


def test_checkout_templates_is_the_package_dir():
    top = REPO / "templates"
    assert top.is_symlink() and top.resolve() == PACKAGE_TEMPLATES.resolve()


def test_wheel_carries_every_template(wheel):
    names = set(wheel.namelist())
    recipes = sorted(PACKAGE_TEMPLATES.glob("*.toml"))
    assert len(recipes) >= 4
    for p in recipes:
        member = f"glmlaunch/templates/{p.name}"
        assert member in names, member
        assert wheel.read(member) == p.read_bytes(), member
    assert not [n for n in names if n.startswith("templates/")], "a top-level templates/ in the wheel"


def test_wheel_carries_the_bash_template(wheel):
    member = f"glmlaunch/templates/{BASH_TEMPLATE}"
    assert wheel.read(member) == (PACKAGE_TEMPLATES / BASH_TEMPLATE).read_bytes()


def test_wheel_requires_jinja2(wheel):
    (meta,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    assert "Requires-Dist: jinja2>=3" in wheel.read(meta).decode().splitlines()


def test_no_two_test_files_share_a_basename():
    # tests/ has no __init__.py: pytest imports test files by basename, so two alike in unit/ and
    # integration/ stop the whole collection ("import file mismatch")
    root = Path(__file__).resolve().parents[1]
    names = [p.name for p in root.rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
