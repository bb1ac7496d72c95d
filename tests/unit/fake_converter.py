"""A stand-in for miles' tools/convert_hf_to_torch_dist.py (the real one needs GPUs, Megatron
and miles). The tests copy it to ``<fake miles_dir>/tools/convert_hf_to_torch_dist.py``.

Run by torchrun (gloo): it checks it was started as the test expects (``expect.json`` next to
it: world size, node count, the model args and the HF checkpoint it must be given), then writes
a real ``torch_dist`` checkpoint of a tiny GLM-4.5-shaped model with
``torch.distributed.checkpoint`` under ``--save`` (``release/`` with the layers split over the
ranks, then rank 0 writes ``latest_checkpointed_iteration.txt`` = ``release`` after a barrier,
as the real tool does). ``expect.json`` may also ask it to drop a layer (``drop_layer``) or to
die on one node (``die_on_node``: that node's ranks exit 1 before writing; ``kill_on_node``:
they are killed with SIGKILL).

``write_tiny`` is also imported by the unit tests (one process, no process group).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch


def _flag(args, flag, default=None):
    return args[args.index(flag) + 1] if flag in args else default


def tensors(args: list[str], drop_layer: int | None = None) -> dict[str, torch.Tensor]:
    """The tensor names of a GLM-4.5 ``torch_dist`` checkpoint for ``args``, with tiny shapes."""
    n = int(_flag(args, "--num-layers"))
    e = int(_flag(args, "--num-experts", 0))
    pattern = []  # "[0]*3+[1]*89" (self-contained: this file runs on the nodes without glmlaunch)
    for term in _flag(args, "--moe-layer-freq").split("+"):
        value, times = term.split("*")
        pattern += [int(value.strip("[]"))] * int(times)
    mtp = int(_flag(args, "--mtp-num-layers", 0))
    h = 4
    t = {
        "embedding.word_embeddings.weight": torch.ones(8, h),
        "decoder.final_layernorm.weight": torch.ones(h),
        "output_layer.weight": torch.ones(8, h),
    }
    for i in range(n):
        if i == drop_layer:
            continue
        p = f"decoder.layers.{i}."
        t[p + "self_attention.linear_qkv.weight"] = torch.full((3 * h, h), float(i))
        t[p + "self_attention.linear_proj.weight"] = torch.ones(h, h)
        if pattern[i]:
            t[p + "mlp.router.weight"] = torch.ones(e, h)
            t[p + "mlp.experts.experts.linear_fc1.weight"] = torch.ones(e, 2, h)
            t[p + "mlp.experts.experts.linear_fc2.weight"] = torch.ones(e, h, 1)
            t[p + "mlp.shared_experts.linear_fc1.weight"] = torch.ones(2, h)
        else:
            t[p + "mlp.linear_fc1.weight"] = torch.ones(2, h)
            t[p + "mlp.linear_fc2.weight"] = torch.ones(h, 1)
    for k in range(mtp):
        t[f"mtp.layers.{k}.enorm.weight"] = torch.ones(h)
    return t


def write_tiny(
    save: str, args: list[str], drop_layer: int | None = None, rank: int = 0, world: int = 1
) -> None:
    """Write this rank's part (every ``world``-th layer's tensors) and, on rank 0, the tracker."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    allt = tensors(args, drop_layer)
    mine = {}
    for k, v in allt.items():
        layer = k.split(".")[2] if k.startswith("decoder.layers.") else None
        owner = int(layer) % world if layer is not None else 0
        if owner == rank:
            mine[k] = v
    dcp.save(mine, checkpoint_id=str(Path(save) / "release"), no_dist=not dist.is_initialized())
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        (Path(save) / "latest_checkpointed_iteration.txt").write_text("release")


def main() -> int:
    import torch.distributed as dist

    args = sys.argv[1:]
    expect = json.loads((Path(__file__).parent / "expect.json").read_text())
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    local, nproc = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    node = int(os.environ["GROUP_RANK"])
    assert world == expect["world_size"], f"world size {world}, expected {expect['world_size']}"
    assert world == nproc * expect["nnodes"], f"{nproc} per node x {expect['nnodes']} nodes != {world}"
    assert 0 <= local < nproc and rank == node * nproc + local, (rank, node, local)
    model_args = args[: args.index("--hf-checkpoint")]
    assert model_args == expect["model_args"], f"model args differ: {model_args} != {expect['model_args']}"
    assert _flag(args, "--hf-checkpoint") == expect["hf_checkpoint"], args
    save = _flag(args, "--save")
    print(f"converter rank {rank}/{world} on node {node}: --save {save}", flush=True)
    if expect.get("die_on_node") == node:
        print(f"converter: node {node} dies on purpose", flush=True)
        return 1
    if expect.get("kill_on_node") == node:
        import signal

        print(f"converter: node {node} is killed (SIGKILL)", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    dist.init_process_group("gloo")
    write_tiny(save, args, expect.get("drop_layer"), rank, world)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
