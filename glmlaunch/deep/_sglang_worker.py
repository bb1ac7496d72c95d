"""Subprocess half of the deep SGLang check: resolve one rollout engine's ``ServerArgs``.

Run by :func:`glmlaunch.deep.sglang.check_sglang` with the interpreter that has SGLang (it
loads this file by path, so that interpreter needs only SGLang and the standard library; it
also runs as ``python -m glmlaunch.deep._sglang_worker``). Reads one JSON request on stdin,
writes one JSON answer on stdout. Everything SGLang prints goes to stderr.

Request::

    {"kwargs": {ServerArgs field: value},      # built by glmlaunch.deep.sglang.engine_kwargs
     "sglang_tokens": ["--sglang-x", "v", ...],  # every --sglang-* ServerArgs flag of the argv
     "resolved_keys": [field, ...]}

Answer::

    {"available": bool, "import_error": str, "sglang_version": "0.5.23",
     "has_attn_dp_size": bool, "has_enable_dp_attention": bool,
     "notes": [{"kind": ..., ...}],            # flag parsing, renames (see below)
     "errors": [{"stage", "type", "message", "assert_source", "fields"}],
     "resolved": {field: value}, "timings": {"import_s", "resolve_s"}}

``stage`` is ``"construct"`` (``ServerArgs(**kw)``), ``"resolve"`` (``resolve_once()``) or
``"check"`` (``check_server_args()``). ``assert_source`` is the failing ``assert`` statement
when SGLang raised a bare ``AssertionError``. ``fields`` lists the ServerArgs fields named in
the message or the statement.

Stubs (deps.md §6): ``triton`` (top-level import in ``sglang/srt/utils/common.py``) and
``torchvision`` (``sglang.srt.configs`` -> ``internvl_utils``) are replaced by SGLang's own macOS
stub modules, each only when the real package is absent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import sys
import time
import traceback
from typing import Any

# miles/backends/sglang_utils/arguments.py (add_sglang_arguments): ServerArgs flags miles does
# not expose as --sglang-*, because it sets them itself per engine.
MILES_SKIPPED = (
    "model_path",
    "config",
    "trust_remote_code",
    "random_seed",
    "enable_memory_saver",
    "tp_size",
    "port",
    "nnodes",
    "node_rank",
    "dist_init_addr",
    "gpu_id_step",
    "base_gpu_id",
    "nccl_port",
    "skip_server_warmup",
    "enable_return_routed_experts",
)


def _find_spec(name: str) -> Any:
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _load_platform_stubs() -> Any:
    """sglang/_platform_stubs.py, loaded by path (importing it as sglang._platform_stubs would
    run sglang/__init__.py, which imports triton)."""
    loc = list(_find_spec("sglang").submodule_search_locations)[0]
    path = os.path.join(loc, "_platform_stubs.py")
    spec = importlib.util.spec_from_file_location("_glmlaunch_sglang_platform_stubs", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # @dataclass looks its module up in sys.modules
    spec.loader.exec_module(mod)
    return mod


def install_stubs() -> list[str]:
    """Install the triton / torchvision stubs where the real packages are absent; return which."""
    installed: list[str] = []
    need_triton = _find_spec("triton") is None
    need_tv = _find_spec("torchvision") is None
    if not (need_triton or need_tv):
        return installed
    ps = _load_platform_stubs()
    if need_triton:
        import torch

        # install_platform_stubs() acts only on Apple Silicon with MPS: pretend, then restore.
        saved = (sys.platform, platform.machine, torch.backends.mps.is_available)
        sys.platform = "darwin"
        platform.machine = lambda: "arm64"
        torch.backends.mps.is_available = lambda: True
        try:
            ps.install_platform_stubs()
        finally:
            sys.platform, platform.machine, torch.backends.mps.is_available = saved
        installed.append("triton")
    if need_tv:
        # transformers caches these (lru_cache): ask first, so it keeps "no torchvision" and never
        # touches the mock (it would crash on InterpolationMode.NEAREST_EXACT).
        from transformers.utils import import_utils as iu

        iu.is_torchvision_available()
        if hasattr(iu, "is_torchvision_v2_available"):
            iu.is_torchvision_v2_available()

        class _TorchvisionFinder:
            def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
                if fullname != "torchvision" and not fullname.startswith("torchvision."):
                    return None
                if fullname in sys.modules:
                    return getattr(sys.modules[fullname], "__spec__", None)
                mod = ps._make_mock(fullname)
                parent, _, child = fullname.rpartition(".")
                if parent in sys.modules:
                    setattr(sys.modules[parent], child, mod)
                return mod.__spec__

        sys.meta_path.insert(0, _TorchvisionFinder())
        installed.append("torchvision")
    return installed


def _sglang_version() -> str:
    try:
        from importlib.metadata import version

        return version("sglang")
    except Exception:
        try:
            from sglang.version import __version__

            return str(__version__)
        except Exception:
            return "unknown"


def _field_names(cls: Any) -> list[str]:
    try:
        import msgspec

        if issubclass(cls, msgspec.Struct):
            return [f.name for f in msgspec.structs.fields(cls)]
    except ImportError:
        pass
    import dataclasses

    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    return [n for n in getattr(cls, "__annotations__", {})]


class _ParseError(Exception):
    pass


def _miles_parser(ServerArgs: Any) -> Any:
    """The --sglang-* part of miles' argparse parser: SGLang's own add_cli_args with every flag
    prefixed and miles' skipped fields left out (miles add_sglang_arguments)."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str):  # never exit
            raise _ParseError(message)

    parser = Parser(prog="miles", add_help=False)
    old = parser.add_argument

    def add(*names: Any, **kw: Any) -> Any:
        canon = kw.get("dest")
        if canon is None:
            for n in names:
                if isinstance(n, str) and n.startswith("--"):
                    canon = n[2:].replace("-", "_")
                    break
        if canon in MILES_SKIPPED:
            return None
        new = [f"--sglang-{n.lstrip('-')}" if isinstance(n, str) and n.startswith("-") else n for n in names]
        if isinstance(kw.get("dest"), str) and not kw["dest"].startswith("sglang_"):
            kw = {**kw, "dest": f"sglang_{kw['dest']}"}
        return old(*new, **kw)

    parser.add_argument = add
    ServerArgs.add_cli_args(parser)
    parser.add_argument = old
    return parser


def _parse_tokens(ServerArgs: Any, tokens: list[str], fields: set[str]) -> tuple[dict, list[dict], set[str]]:
    """Parse the argv's --sglang-* tokens the way miles' parser does. Returns the ServerArgs
    values they set ({field: value}), notes for flags the parser refuses, and the fields of
    refused flags (left at SGLang's defaults, so that resolution still checks the rest)."""
    notes: list[dict] = []
    refused: set[str] = set()
    if not tokens:
        return {}, notes, refused
    try:
        parser = _miles_parser(ServerArgs)
    except Exception as exc:
        notes.append({"kind": "parser_unavailable", "message": f"{type(exc).__name__}: {exc}"})
        return {}, notes, refused
    # Parse one flag at a time, so that one bad flag does not hide the others.
    groups: list[list[str]] = []
    for tok in tokens:
        if tok.startswith("--") and len(tok) > 2:
            groups.append([tok])
        elif groups:
            groups[-1].append(tok)
    values: dict[str, Any] = {}
    defaults = vars(parser.parse_args([]))
    for group in groups:
        flag = group[0].split("=", 1)[0]
        try:
            ns, rest = parser.parse_known_args(group)
        except _ParseError as exc:
            notes.append({"kind": "flag_rejected", "flag": flag, "message": str(exc)})
            action = parser._option_string_actions.get(flag)
            if action is not None and action.dest.startswith("sglang_"):
                refused.add(action.dest[len("sglang_") :])
            continue
        if rest:
            stem = flag[len("--sglang-") :].replace("-", "_")
            kind = "flag_skipped_by_miles" if stem in MILES_SKIPPED else "flag_unknown"
            similar = sorted(f for f in fields if stem and (f.startswith(stem) or stem.startswith(f)))[:4]
            notes.append(
                {
                    "kind": kind,
                    "flag": flag,
                    "message": f"unrecognized arguments: {' '.join(rest)}",
                    "similar": similar,
                }
            )
            continue
        for dest, val in vars(ns).items():
            if val != defaults.get(dest) and dest.startswith("sglang_"):
                values[dest[len("sglang_") :]] = val
    return values, notes, refused


def _fields_named(text: str, fields: list[str]) -> list[str]:
    """ServerArgs fields named in ``text``, in order: as identifiers or as CLI flags (--x-y)."""
    fset = set(fields)
    flags = [(m.start(), m.group(1).replace("-", "_")) for m in re.finditer(r"--([a-z][a-z0-9-]*)", text)]
    found = [(pos, f) for pos, f in flags if f in fset]
    found += [
        (m.start(), f)
        for f in fields
        for m in re.finditer(rf"(?<![A-Za-z0-9_]){re.escape(f)}(?![A-Za-z0-9_])", text)
    ]
    seen: list[str] = []
    for _pos, f in sorted(found):
        if f not in seen:
            seen.append(f)
    return seen


def _assert_source(exc: BaseException) -> str:
    """The source line of the statement that raised (the innermost frame), for bare asserts."""
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return ""
    frame = tb[-1]
    text = (frame.line or "").strip()
    where = f"{os.path.basename(frame.filename)}:{frame.lineno}"
    # An assert spread over several lines: read on until the statement closes.
    try:
        with open(frame.filename, encoding="utf-8") as fh:
            lines = fh.readlines()
        i = frame.lineno - 1
        stmt = lines[i].strip()
        while stmt.count("(") > stmt.count(")") and i + 1 < len(lines) and i < frame.lineno + 8:
            i += 1
            stmt += " " + lines[i].strip()
        text = stmt or text
    except OSError:
        pass
    return f"{text} ({where})" if text else where


def _error(stage: str, exc: BaseException, fields: list[str]) -> dict:
    msg = str(exc)
    src = _assert_source(exc) if isinstance(exc, AssertionError) else ""
    if isinstance(exc, SystemExit):
        msg = f"SystemExit({exc.code})"
    return {
        "stage": stage,
        "type": type(exc).__name__,
        "message": msg,
        "assert_source": src,
        "fields": _fields_named(f"{msg} {src}", fields),
    }


def _jsonable(v: Any) -> Any:
    try:
        json.dumps(v)
        return v
    except (TypeError, ValueError):
        if isinstance(v, (list, tuple)):
            return [_jsonable(x) for x in v]
        if isinstance(v, dict):
            return {str(k): _jsonable(x) for k, x in v.items()}
        return str(v)


def run(req: dict) -> dict:
    out: dict[str, Any] = {
        "available": False,
        "import_error": "",
        "sglang_version": "",
        "notes": [],
        "errors": [],
        "resolved": {},
        "timings": {},
    }
    if _find_spec("sglang") is None:
        out["import_error"] = f"no module named 'sglang' in {sys.executable}"
        return out
    out["sglang_version"] = _sglang_version()
    t0 = time.monotonic()
    try:
        out["stubs"] = install_stubs()
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from sglang.srt.server_args import ServerArgs
    except BaseException as exc:  # ImportError, or anything a broken install raises on import
        out["import_error"] = (
            f"sglang {out['sglang_version']} is installed but `from sglang.srt.server_args "
            f"import ServerArgs` failed: {type(exc).__name__}: {exc}"
        )
        return out
    out["available"] = True
    out["timings"]["import_s"] = round(time.monotonic() - t0, 2)

    fields = _field_names(ServerArgs)
    fset = set(fields)
    out["has_attn_dp_size"] = "attn_dp_size" in fset
    out["has_enable_dp_attention"] = "enable_dp_attention" in fset
    kw = dict(req.get("kwargs") or {})

    parsed, notes, refused = _parse_tokens(ServerArgs, list(req.get("sglang_tokens") or []), fset)
    out["notes"].extend(notes)
    for k in refused:
        kw.pop(k, None)
    for k, v in parsed.items():
        if k not in kw and k in fset:
            kw[k] = v

    # Renamed / removed fields the trainer argv still uses.
    if "cuda_graph_bs" in kw and "cuda_graph_bs" not in fset:
        bs = kw.pop("cuda_graph_bs")
        if "cuda_graph_bs_decode" in fset:
            kw["cuda_graph_bs_decode"] = bs
        out["notes"].append(
            {
                "kind": "renamed",
                "old": "cuda_graph_bs",
                "new": "cuda_graph_bs_decode" if "cuda_graph_bs_decode" in fset else "",
            }
        )
    # dp-attention: the deprecated spelling, rewritten the way SGLang's own
    # handle_deprecated_dp_attention does (parallel_hook.py), so it also works once the old
    # field is gone.
    if kw.get("enable_dp_attention") and "attn_dp_size" in fset:
        dp = int(kw.get("dp_size") or 1)
        if int(kw.get("attn_dp_size") or 1) == 1:
            kw["attn_dp_size"] = dp
            kw["dp_size"] = 1
        kw.pop("enable_dp_attention")
        out["notes"].append(
            {"kind": "dp_attention_rename", "dp_size": dp, "old_field_exists": "enable_dp_attention" in fset}
        )
    unknown = sorted(k for k in kw if k not in fset)
    for k in unknown:
        out["notes"].append({"kind": "field_unknown", "field": k, "value": _jsonable(kw.pop(k))})
    out["kwargs"] = _jsonable(kw)

    t1 = time.monotonic()
    stage = "construct"
    try:
        sa = ServerArgs(**kw)
        stage = "resolve"
        if hasattr(sa, "resolve_once"):
            sa.resolve_once()
        stage = "check"
        if hasattr(sa, "check_server_args"):
            sa.check_server_args()
    except (Exception, SystemExit) as exc:
        out["errors"].append(_error(stage, exc, fields))
        out["timings"]["resolve_s"] = round(time.monotonic() - t1, 2)
        return out
    out["timings"]["resolve_s"] = round(time.monotonic() - t1, 2)
    try:
        resolved = sa.resolved_dict() if hasattr(sa, "resolved_dict") else {f: getattr(sa, f) for f in fields}
    except Exception:
        resolved = {f: getattr(sa, f, None) for f in fields}
    keys = req.get("resolved_keys") or list(kw)
    out["resolved"] = {k: _jsonable(resolved[k]) for k in keys if k in resolved}
    return out


def main() -> int:
    # SGLang and transformers print to stdout here and there: keep stdout for the answer only.
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        req = json.loads(sys.stdin.read() or "{}")
        res = run(req)
    except BaseException as exc:  # report, never die silently
        res = {
            "available": None,
            "fatal": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    answer.write(json.dumps(res, default=str))
    answer.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
