"""One home per rule: over every template and the deep-test layouts, ``checks.run(..., deep=True)``
reports no (field, rule) pair twice, and every finding's source is an upstream ``path:line
(project@version)`` or a row of docs/rules.md.

The layouts run the deep checks with an interpreter that has no SGLang (one "skipped" warning,
fast); the templates use the SGLang validation venv when it exists (as test_deep_sglang does).
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

import pytest
from test_deep_megatron import CASES, resolved
from test_deep_sglang import _sglang_python

from glmlaunch import checks
from glmlaunch.deep.sglang import ENV_PYTHON
from glmlaunch.deepcheck import deep_check
from glmlaunch.hosts import placeholder_allocation
from glmlaunch.plan import build_plan
from glmlaunch.recipe import list_templates, load_recipe
from glmlaunch.resolve import resolve

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "docs" / "rules.md"
PINNED = r"(miles@[0-9a-f]{12}|Megatron-LM@[0-9a-f]{9}|megatron-core@\d+\.\d+\.\d+|sglang@\d+\.\d+\.\d+\S*|torch@[\d.]+)"
UPSTREAM = re.compile(rf"^[\w./-]+\.py:\d+(-\d+)? \({PINNED}\)$")
DOC = re.compile(r"^docs/rules\.md#([a-z0-9-]+)$")


def _anchors() -> set[str]:
    return set(re.findall(r'<a id="([a-z0-9-]+)"></a>', RULES.read_text()))


def _source_ok(source: str) -> bool:
    parts = source.split("; ")
    return all(UPSTREAM.match(p) or (DOC.match(p) and DOC.match(p).group(1) in _anchors()) for p in parts)


def _plan(res):
    return build_plan(res.recipe, res.alloc, resolved=res, run_id="rules", python="/opt/glm/bin/python3")


@pytest.fixture
def no_sglang(tmp_path, monkeypatch):
    exe = tmp_path / "python-nosite"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    exe.chmod(0o755)
    monkeypatch.setenv(ENV_PYTHON, str(exe))


def _template_findings(name: str, monkeypatch) -> list:
    exe = _sglang_python()
    if Path(exe).exists():
        monkeypatch.setenv(ENV_PYTHON, exe)
    recipe = load_recipe(name)
    res = resolve(recipe, placeholder_allocation(recipe.cluster.nodes or 3, 8))
    return list(checks.run(res, _plan(res), deep=True))


def _assert_once_and_cited(found: list) -> None:
    twice = [k for k, n in Counter((f.field, f.rule) for f in found).items() if n > 1]
    assert not twice, [str(f) for f in found if (f.field, f.rule) in twice]
    bad = [f"{f.field}: {f.source!r}" for f in found if not _source_ok(f.source)]
    assert not bad, bad


@pytest.mark.parametrize("name", list_templates())
def test_templates_each_finding_once_and_cited(name, monkeypatch):
    pytest.importorskip("megatron.core")
    _assert_once_and_cited(_template_findings(name, monkeypatch))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_layouts_each_finding_once_and_cited(case, monkeypatch, no_sglang):
    pytest.importorskip("megatron.core")
    res = resolved(case, monkeypatch)
    plan = _plan(res)
    _assert_once_and_cited(list(checks.run(res, plan, deep=True)))
    # the deep findings behind a shallow error (checks.run skips them then) are cited too
    _assert_once_and_cited(deep_check(res.recipe, plan))


def test_every_docs_anchor_in_the_package_exists():
    anchors = _anchors()
    used = set()
    for p in (REPO / "glmlaunch").rglob("*.py"):
        text = p.read_text()
        used |= set(re.findall(r"docs/rules\.md#([a-z0-9-]+)", text))
        used |= set(re.findall(r'\bown\("([a-z0-9-]+)"\)', text))
    assert used and not used - anchors, sorted(used - anchors)


def test_no_citations_of_documents_outside_the_repo():
    for p in (REPO / "glmlaunch").rglob("*.py"):
        for i, line in enumerate(p.read_text().splitlines(), 1):
            assert not re.search(r"contract|deps\.md|anchors\.md|mission\.md", line), (
                f"{p}:{i}: {line.strip()}"
            )


def test_source_pattern():
    assert _source_ok("miles/utils/arguments.py:3134 (miles@31f1ca961a94)")
    assert _source_ok("megatron/core/parallel_state.py:741 (megatron-core@0.16.1); docs/rules.md#nodes")
    assert not _source_ok("miles/utils/arguments.py (miles@31f1ca961a94)")  # no line
    assert not _source_ok("miles/utils/arguments.py:3134")  # no version
    assert not _source_ok("trainer contract §4")
    assert not _source_ok("docs/rules.md#no-such-rule")
