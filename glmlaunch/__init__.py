"""glmlaunch: launch miles GSPO/GRPO training of GLM-4.5 MoE models on a Ray cluster started
from an MPI hostfile (over SSH with Fabric) or a Slurm allocation (srun / submitit).

Public API::

    from glmlaunch import launch, up, Run, plan_launch, load_recipe, read_hostfile, from_slurm, discover
    from glmlaunch import prepare   # downloads, HF -> torch_dist conversion, node-local copies

Every name is imported on first use, so ``import glmlaunch`` (and ``glmlaunch --help``) stays
fast: the executor pulls in Ray and Fabric only when a cluster is started.
"""

from importlib import import_module

__version__ = "0.1.0"

_HOMES = {
    "errors": [
        "CheckFailed", "ClusterError", "Finding", "Findings", "GlmlaunchError", "HostfileError", "JobError",
        "PrepareError", "RecipeError", "TransportError", "UsageError",
    ],
    "hosts": ["Allocation", "AllocationKind", "Host", "discover", "from_slurm", "read_hostfile"],
    "options": ["Defaults", "SSHOptions"],
    "plan": ["LaunchPlan", "PortPlan", "build_plan"],
    "recipe": ["Recipe", "load_recipe"],
    "render": ["render_bash", "render_json"],
    "resolve": ["Resolved", "resolve"],
    "run": ["Run", "launch", "open_run", "plan_launch", "up"],
    "cluster": ["RayCluster"],
    "prep": ["PrepareResult", "prepare"],
}  # fmt: skip
_WHERE = {name: module for module, names in _HOMES.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'glmlaunch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
