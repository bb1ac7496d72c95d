"""glmlaunch: launch miles GSPO/GRPO training of GLM-4.5 MoE models on a Ray cluster started
from an MPI hostfile (over SSH with Fabric) or a Slurm allocation (srun / submitit).

Public API::

    from glmlaunch import launch, up, Run, plan_launch, load_recipe, read_hostfile, from_slurm, discover

``launch``, ``up``, ``Run`` and ``plan_launch`` are imported on first use (they pull in the
executor); the rest is light.
"""

from .errors import (
    CheckFailed,
    ClusterError,
    Finding,
    Findings,
    GlmlaunchError,
    HostfileError,
    JobError,
    RecipeError,
    TransportError,
    UsageError,
)
from .hosts import Allocation, AllocationKind, Host, discover, from_slurm, read_hostfile
from .options import Defaults, SSHOptions
from .plan import LaunchPlan, PortPlan, build_plan
from .recipe import Recipe, load_recipe
from .render import render_bash, render_json
from .resolve import Resolved, resolve

__version__ = "0.1.0"

_LAZY = {"launch", "up", "Run", "plan_launch", "open_run", "RayCluster"}

__all__ = [
    "Allocation",
    "AllocationKind",
    "CheckFailed",
    "ClusterError",
    "Defaults",
    "Finding",
    "Findings",
    "GlmlaunchError",
    "Host",
    "HostfileError",
    "JobError",
    "LaunchPlan",
    "PortPlan",
    "Recipe",
    "RecipeError",
    "Resolved",
    "SSHOptions",
    "TransportError",
    "UsageError",
    "build_plan",
    "discover",
    "from_slurm",
    "load_recipe",
    "read_hostfile",
    "render_bash",
    "render_json",
    "resolve",
    *sorted(_LAZY),
]


def __getattr__(name):  # lazy: the executor imports Ray and Fabric only when used
    if name == "RayCluster":
        from .cluster import RayCluster

        return RayCluster
    if name in _LAZY:
        from . import run

        return getattr(run, name)
    raise AttributeError(name)
