"""glmlaunch: launch miles GSPO/GRPO training of GLM-4.5 MoE models on a Ray cluster started
from an MPI hostfile (over SSH with Fabric) or a Slurm allocation (srun / submitit).

Public API::

    from glmlaunch import launch, load_recipe, read_hostfile, from_slurm, build_plan, RayCluster
"""

from .errors import (
    CheckFailed,
    ClusterError,
    Finding,
    GlmlaunchError,
    HostfileError,
    JobError,
    RecipeError,
    TransportError,
)
from .hosts import Allocation, Host, discover, from_slurm, read_hostfile
from .plan import LaunchPlan, PortPlan, build_plan
from .recipe import Recipe, load_recipe
from .render import render_bash, render_json

__version__ = "0.1.0"

__all__ = [
    "Allocation", "CheckFailed", "ClusterError", "Finding", "GlmlaunchError", "Host", "HostfileError", "JobError",
    "LaunchPlan", "PortPlan", "Recipe", "RecipeError", "TransportError", "build_plan", "discover", "from_slurm",
    "launch", "load_recipe", "read_hostfile", "render_bash", "render_json", "RayCluster",
]


def __getattr__(name):  # lazy: launch/RayCluster import Ray and Fabric only when used
    if name == "launch":
        from .launcher import launch

        return launch
    if name == "RayCluster":
        from .cluster import RayCluster

        return RayCluster
    raise AttributeError(name)
