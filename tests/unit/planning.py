"""Test helpers: a plan together with the findings of :func:`glmlaunch.checks.shallow`, as the
entry points see them (``glmlaunch.run.plan_launch`` adds the deep and node checks)."""

from __future__ import annotations

from dataclasses import dataclass

from glmlaunch import checks
from glmlaunch.errors import Findings
from glmlaunch.plan import LaunchPlan, build_plan
from glmlaunch.resolve import resolve


@dataclass
class Checked:
    """A :class:`LaunchPlan` (its attributes are read through) and its findings."""

    plan: LaunchPlan
    findings: Findings

    def __getattr__(self, name):
        return getattr(self.plan, name)

    @property
    def errors(self):
        return self.findings.errors


def checked_plan(recipe, alloc, **kw) -> Checked:
    res = resolve(recipe, alloc)
    plan = build_plan(recipe, alloc, resolved=res, **kw)
    return Checked(plan, checks.shallow(res, plan))


def check_all(recipe, alloc, plan=None) -> Findings:
    return checks.shallow(resolve(recipe, alloc), plan)
