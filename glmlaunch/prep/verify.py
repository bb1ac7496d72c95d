"""Verify a Megatron ``torch_dist`` checkpoint with torch's own distributed-checkpoint reader.

What a converted checkpoint looks like (miles tools/convert_hf_to_torch_dist.py:131-145
(miles@31f1ca961a94)): ``<save>/release/`` holds the checkpoint (``.metadata`` plus the
``*.distcp`` shards), and rank 0 writes ``<save>/latest_checkpointed_iteration.txt`` =
``release`` last, after a barrier. The tensor names are megatron-core's sharded state dict:

- ``embedding.word_embeddings.weight``, ``decoder.final_layernorm.weight`` and (untied
  embeddings) ``output_layer.weight`` (megatron/core/models/gpt/gpt_model.py);
- one key set per layer, ``decoder.layers.<i>.`` with the global layer number ``i``, because a
  list ``--moe-layer-freq`` makes the layers non-homogeneous (``TransformerBlock.sharded_state_dict``,
  megatron/core/transformer/transformer_block.py, megatron-core 0.16): attention
  (``self_attention.linear_qkv.weight``, ``self_attention.linear_proj.weight``) in every layer;
  a dense layer's ``mlp.linear_fc1.weight`` / ``mlp.linear_fc2.weight``; a MoE layer's
  ``mlp.router.weight`` (``[num_experts, hidden]``), its experts under ``mlp.experts.`` (the
  expert axis prepended: ``[num_experts, ...]``, megatron/core/transformer/moe/experts.py) and,
  with ``--moe-shared-expert-intermediate-size``, ``mlp.shared_experts.linear_fc1.weight``;
- MTP layers (``--mtp-num-layers``) under ``mtp.layers.<k>.``
  (megatron/core/transformer/multi_token_prediction.py).

:func:`verify_torch_dist` checks all of that, the tracker, and that every shard file the
metadata names exists with the bytes it says. torch is imported only when it runs.
"""

from __future__ import annotations

import ast
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import PrepareError

TRACKER = "latest_checkpointed_iteration.txt"
STAMP = ".glmlaunch-verified.json"


@dataclass(frozen=True)
class Expected:
    """What a checkpoint of given model args must hold: ``num_layers`` decoder layers, of which
    ``dense`` (layer numbers) are dense and the others MoE with ``num_experts`` experts (and shared
    experts when ``shared_experts``), ``mtp_layers`` MTP layers, and an output layer unless the
    embeddings are tied."""

    num_layers: int
    dense: frozenset[int]
    num_experts: int
    mtp_layers: int = 0
    shared_experts: bool = False
    untied: bool = True

    @property
    def moe(self) -> list[int]:
        return [i for i in range(self.num_layers) if i not in self.dense]


def _flag(args: list[str], flag: str) -> str | None:
    if flag in args:
        i = args.index(flag)
        return args[i + 1] if i + 1 < len(args) else None
    return None


def moe_layer_pattern(text: str, num_layers: int) -> list[int]:
    """``--moe-layer-freq`` as one 0/1 entry per layer (1: MoE). Accepts what Megatron accepts
    (megatron/training/arguments.py ``moe_freq_type``): an int N (every N-th layer, from layer 0),
    a list literal, or a sum of repeated lists (``[0]*3+[1]*89``), parsed without ``eval``."""
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        n = int(text)
        return [1 if i % n == 0 else 0 for i in range(num_layers)]
    out: list[int] = []
    for term in text.split("+"):
        m = re.fullmatch(r"\s*(\[[\d,\s]*\])\s*(?:\*\s*(\d+))?\s*", term)
        if not m:
            raise ValueError(f"--moe-layer-freq {text!r}: not a list, a sum of repeated lists or an int")
        part = ast.literal_eval(m.group(1))
        out += list(part) * int(m.group(2) or 1)
    return [int(x) for x in out]


def expected_from_args(args: list[str]) -> Expected:
    """The :class:`Expected` of Megatron model args (tokens, as in
    :attr:`glmlaunch.models.ModelSpec.args`, plus any extra converter args). Raises
    ``ValueError`` for args without ``--num-layers`` or a ``--moe-layer-freq`` of another length."""
    n = _flag(args, "--num-layers")
    if n is None:
        raise ValueError("the model args have no --num-layers")
    num_layers = int(n)
    experts = int(_flag(args, "--num-experts") or 0)
    freq = _flag(args, "--moe-layer-freq")
    if experts == 0:
        pattern = [0] * num_layers
    else:
        pattern = moe_layer_pattern(freq, num_layers) if freq else [1] * num_layers
    if len(pattern) != num_layers:
        raise ValueError(f"--moe-layer-freq has {len(pattern)} entries for {num_layers} layers")
    return Expected(
        num_layers=num_layers,
        dense=frozenset(i for i, x in enumerate(pattern) if not x),
        num_experts=experts,
        mtp_layers=int(_flag(args, "--mtp-num-layers") or 0),
        shared_experts=_flag(args, "--moe-shared-expert-intermediate-size") is not None,
        untied="--untie-embeddings-and-output-weights" in args,
    )


def _norm(key: str) -> str:
    for p in ("model.", "module."):
        if key.startswith(p):
            return key[len(p) :]
    return key


def read_metadata(ckpt_dir: str | os.PathLike):
    """torch's metadata of a distributed checkpoint directory
    (``torch.distributed.checkpoint.FileSystemReader(path).read_metadata()``). Raises
    :class:`PrepareError` when torch is missing or the metadata cannot be read."""
    try:
        from torch.distributed.checkpoint import FileSystemReader
    except ImportError:
        raise PrepareError(
            "torch is not installed here: the torch_dist checkpoint cannot be verified",
            hint="install torch on this machine (pip install torch; the CPU build is enough)",
        ) from None
    try:
        return FileSystemReader(str(ckpt_dir)).read_metadata()
    except Exception as e:  # torch raises several kinds for a missing or torn .metadata
        raise PrepareError(
            f"{ckpt_dir}: torch cannot read the checkpoint's metadata ({type(e).__name__}: {e})",
            {str(ckpt_dir): "unreadable metadata"},
            "convert again (the conversion writes under a temporary name and renames only a verified output)",
        ) from None


def problems_of(path: str | os.PathLike, exp: Expected) -> list[str]:
    """Everything wrong with the ``torch_dist`` checkpoint at ``path`` (the ``--save`` directory)
    against ``exp``, each one line naming the layer or file; empty: verified. Raises
    :class:`PrepareError` only when torch or the metadata cannot be read at all."""
    root = Path(path)
    out: list[str] = []
    tracker = root / TRACKER
    try:
        text = tracker.read_text().strip()
    except OSError:
        return [f"{tracker} is missing: the conversion did not finish"]
    if text != "release":
        out.append(f"{tracker} reads {text[:40]!r}, not 'release'")
        return out
    ckpt = root / "release"
    if not (ckpt / ".metadata").is_file():
        return out + [f"{ckpt}/.metadata is missing"]
    md = read_metadata(ckpt)
    sizes = {}
    for k, v in md.state_dict_metadata.items():
        sizes[_norm(k)] = list(getattr(v, "size", []) or [])
    keys = set(sizes)

    for k in ["embedding.word_embeddings.weight", "decoder.final_layernorm.weight"] + (
        ["output_layer.weight"] if exp.untied else []
    ):
        if k not in keys:
            out.append(f"tensor {k} is missing")
    present = set()
    for k in keys:
        m = re.match(r"decoder\.layers\.(\d+)\.", k)
        if m:
            present.add(int(m.group(1)))
    missing = [i for i in range(exp.num_layers) if i not in present]
    for i in missing:
        out.append(f"layer {i} is missing (no decoder.layers.{i}.* tensor; {exp.num_layers} layers expected)")
    for i in sorted(x for x in present if x >= exp.num_layers):
        out.append(f"layer {i} is not in the model args ({exp.num_layers} layers: 0..{exp.num_layers - 1})")
    for i in sorted(present & set(range(exp.num_layers))):
        pre = f"decoder.layers.{i}."
        need = [pre + "self_attention.linear_qkv.weight", pre + "self_attention.linear_proj.weight"]
        if i in exp.dense:
            need += [pre + "mlp.linear_fc1.weight", pre + "mlp.linear_fc2.weight"]
        else:
            need.append(pre + "mlp.router.weight")
            if exp.shared_experts:
                need.append(pre + "mlp.shared_experts.linear_fc1.weight")
        for k in need:
            if k not in keys:
                kind = "dense" if i in exp.dense else "MoE"
                out.append(f"layer {i} ({kind}): tensor {k} is missing")
        if i in exp.dense:
            continue
        router = sizes.get(pre + "mlp.router.weight")
        if router and router[0] != exp.num_experts:
            out.append(f"layer {i}: the router has {router[0]} experts, the model args say {exp.num_experts}")
        experts = [k for k in keys if k.startswith(pre + "mlp.experts.")]
        if not experts:
            out.append(f"layer {i} (MoE): no expert tensor (decoder.layers.{i}.mlp.experts.*)")
        for k in sorted(experts):
            s = sizes[k]
            if len(s) >= 3 and s[0] != exp.num_experts:
                out.append(f"layer {i}: {k} holds {s[0]} experts, the model args say {exp.num_experts}")
    for k in range(exp.mtp_layers):
        if not any(x.startswith(f"mtp.layers.{k}.") for x in keys):
            out.append(f"MTP layer {k} is missing (no mtp.layers.{k}.* tensor)")
    shards: dict[str, int] = {}
    for info in md.storage_data.values():
        rel = str(info.relative_path)
        shards[rel] = max(shards.get(rel, 0), int(info.offset) + int(info.length))
    for rel, end in sorted(shards.items()):
        f = ckpt / rel
        try:
            size = f.stat().st_size
        except OSError:
            out.append(f"shard {f} is missing (the metadata names it)")
            continue
        if size < end:
            out.append(f"shard {f} has {size} bytes, the metadata needs {end}")
    return out


def listing(path: str | os.PathLike) -> dict[str, int]:
    """Every file under ``path`` (relative name -> size), the verification stamp excepted."""
    root = Path(path)
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if rel != STAMP:
                out[rel] = p.stat().st_size
    return dict(sorted(out.items()))


def stamp(path: str | os.PathLike, exp: Expected) -> None:
    """Record that ``path`` was verified against ``exp`` (:data:`STAMP`: the expectation and
    every file's size)."""
    root = Path(path)
    data = {"expected": _exp_json(exp), "files": listing(root)}
    tmp = root / f"{STAMP}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data))
    tmp.replace(root / STAMP)


def _exp_json(exp: Expected) -> dict:
    return {
        "num_layers": exp.num_layers,
        "dense": sorted(exp.dense),
        "num_experts": exp.num_experts,
        "mtp_layers": exp.mtp_layers,
        "shared_experts": exp.shared_experts,
        "untied": exp.untied,
    }


def is_verified(path: str | os.PathLike, exp: Expected) -> bool:
    """Whether ``path`` carries a stamp for ``exp`` whose file list still matches (no reading of
    the metadata: the cheap check before skipping the conversion)."""
    root = Path(path)
    try:
        data = json.loads((root / STAMP).read_text())
        tracker = (root / TRACKER).read_text().strip()
    except (OSError, ValueError):
        return False
    return (
        tracker == "release" and data.get("expected") == _exp_json(exp) and data.get("files") == listing(root)
    )


def verify_torch_dist(path: str | os.PathLike, exp: Expected, *, write_stamp: bool = True) -> None:
    """Verify the checkpoint at ``path`` (:func:`problems_of`) and stamp it. Raises
    :class:`PrepareError` listing every problem (the first ones) with the path."""
    problems = problems_of(path, exp)
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise PrepareError(
            f"{path}: the torch_dist checkpoint is not complete:\n"
            + "\n".join(f"  - {p}" for p in problems[:20])
            + more,
            {str(path): problems[0]},
            "convert again (glmlaunch prepare --steps convert); a checkpoint that does not verify is never used",
        )
    if write_stamp:
        stamp(path, exp)
