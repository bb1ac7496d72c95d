"""What :func:`glmlaunch.prepare` returns: one outcome per step, and per node where a step runs
on the nodes (pydantic models: ``PrepareResult.model_dump_json()`` is what the run directory
keeps as ``prepare.json``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

State = Literal["done", "skipped", "failed", "not run"]

STEPS = ("download", "verify-download", "shared-fs", "convert", "verify-convert", "local-copy")
"""The steps of :func:`glmlaunch.prepare`, in order (``--steps`` picks a subset)."""


class NodeOutcome(BaseModel):
    """One node's (or, for the launcher's own work, one item's) part of a step."""

    node: str
    state: State
    detail: str = ""


class StepResult(BaseModel):
    """One step: ``state`` (``done``, ``skipped``: already verified, ``failed``, ``not run``), a
    one-line ``detail``, the per-node (or per-item) outcomes and step-specific ``data`` (the dry
    run's file list, the conversion's argv ...)."""

    step: str
    state: State = "not run"
    detail: str = ""
    nodes: list[NodeOutcome] = Field(default_factory=list)
    data: dict = Field(default_factory=dict)


class PrepareResult(BaseModel):
    """Every step of one :func:`glmlaunch.prepare` call, in order. ``run_dir``: where the per-node
    logs are (``hosts/<host>/<step>.log``); ``dry_run``: nothing was written."""

    recipe: str
    run_dir: str | None = None
    dry_run: bool = False
    steps: list[StepResult] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.state != "failed" for s in self.steps)

    def step(self, name: str) -> StepResult:
        """The result of step ``name`` (one of :data:`STEPS`); raises ``KeyError``."""
        for s in self.steps:
            if s.step == name:
                return s
        raise KeyError(name)
