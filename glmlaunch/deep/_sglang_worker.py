"""Subprocess half of the deep SGLang check: one rollout engine's ``ServerArgs`` resolved by SGLang.

Run by :func:`glmlaunch.deep.sglang.check_sglang` with the interpreter that has SGLang (it loads
this file by path, so that interpreter needs only SGLang and the standard library). Reads one
JSON request on stdin, writes one JSON answer on stdout; everything SGLang prints goes to stderr.

Request: ``{"kwargs": {ServerArgs field: value}, "sglang_tokens": ["--sglang-x", "v", ...],
"flags": {ServerArgs field: the flag that set it}, "flag_fields": {flag: recipe field}}``
(built by :func:`glmlaunch.deep.sglang.engine_kwargs`).

Answer: ``{"available": bool, "import_error": str, "sglang_version": str, "findings": [{"field",
"message", "rule", "source", "severity", "extra"}], "timings": {...}}``. The findings are SGLang's
own verdict: ``--sglang-*`` flags its parser (which miles reuses) refuses, what ``ServerArgs(...)``,
``resolve_once()`` and ``check_server_args()`` raise (a bare ``assert`` shown as its statement),
the deprecated dp-attention spelling, and values SGLang changes while resolving. Each source is
the SGLang line (at the installed version) or the miles line that applies.

Stubs: ``triton`` (a top-level import of ``sglang/srt/utils/common.py``) and ``torchvision``
(``sglang.srt.configs`` -> ``internvl_utils``) are replaced by SGLang's own macOS stub modules
(``sglang/_platform_stubs.py``), each only when the real package is absent.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import platform
import re
import sys
import time
import traceback
from typing import Any

MILES = "miles@31f1ca961a94"
GPUS_PER_ENGINE = "--rollout-num-gpus-per-engine"
# ServerArgs fields miles sets itself per engine, not --sglang-* flags
# (miles/backends/sglang_utils/arguments.py:39-59 (miles@31f1ca961a94)).
MILES_SKIPPED = (
    "model_path",
    "config",
    "trust_remote_code",
    "random_seed",
    "enable_memory_saver",
    "port",
    "nnodes",
    "node_rank",
    "dist_init_addr",
    "gpu_id_step",
    "base_gpu_id",
    "nccl_port",
    "skip_server_warmup",
    "enable_return_routed_experts",
    "enable_return_indexer_topk",
)
# ServerArgs fields miles derives from other trainer flags, and those flags.
DERIVED_FLAGS = {
    "tp_size": GPUS_PER_ENGINE,
    "nnodes": GPUS_PER_ENGINE,
    "node_rank": GPUS_PER_ENGINE,
    "base_gpu_id": GPUS_PER_ENGINE,
    "enable_memory_saver": "--colocate",
    "random_seed": "--seed",
    "enable_return_routed_experts": "--use-rollout-routing-replay",
    "dtype": "--fp16",
}
# Message phrases that name no field literally -> the flag they are about.
PHRASE_FLAGS = (
    ("speculative", "--sglang-speculative-algorithm"),
    ("eagle", "--sglang-speculative-algorithm"),
    ("dp-lm-head", "--sglang-enable-dp-lm-head"),
    ("data-parallel", "--sglang-dp-size"),
    ("attention dp", "--sglang-dp-size"),
    ("number of nodes", GPUS_PER_ENGINE),
    ("expert", "--sglang-ep-size"),
    ("cuda graph", "--sglang-cuda-graph-bs"),
    ("kv cache", "--sglang-kv-cache-dtype"),
    ("attention backend", "--sglang-attention-backend"),
)
# Values compared before and after resolution (a silent change is a warning).
WATCHED = (
    "ep_size",
    "moe_dense_tp_size",
    "mem_fraction_static",
    "speculative_algorithm",
    "speculative_num_steps",
    "speculative_eagle_topk",
    "speculative_num_draft_tokens",
    "kv_cache_dtype",
    "attention_backend",
    "enable_dp_lm_head",
)
VERSION = "unknown"


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
    assert spec is not None and spec.loader is not None, path
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
        patches = (
            (sys, "platform", "darwin"),
            (platform, "machine", lambda: "arm64"),
            (torch.backends.mps, "is_available", lambda: True),
        )
        saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
        for obj, name, value in patches:
            setattr(obj, name, value)
        try:
            ps.install_platform_stubs()
        finally:
            for obj, name, value in saved:
                setattr(obj, name, value)
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

    setattr(parser, "add_argument", add)  # noqa: B010 (a method replaced for one call)
    ServerArgs.add_cli_args(parser)
    setattr(parser, "add_argument", old)  # noqa: B010
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
        i = (frame.lineno or 1) - 1
        stmt = lines[i].strip()
        while stmt.count("(") > stmt.count(")") and i + 1 < len(lines) and i < (frame.lineno or 1) + 8:
            i += 1
            stmt += " " + lines[i].strip()
        text = stmt or text
    except OSError:
        pass
    return f"{text} ({where})" if text else where


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


def _where(path: str, line: int | None) -> str:
    """``sglang/...py:LINE (sglang@VERSION)`` for a file of the installed SGLang."""
    path = path.replace(os.sep, "/")
    i = path.rfind("/sglang/")
    return f"{path[i + 1 :] if i >= 0 else os.path.basename(path)}:{line} (sglang@{VERSION})"


def _defined_at(obj: Any) -> str:
    """Where ``obj`` (a function or class of SGLang) is defined."""
    try:
        return _where(inspect.getsourcefile(obj) or "", inspect.getsourcelines(obj)[1])
    except (OSError, TypeError):
        return f"sglang@{VERSION}"


def _raised_at(exc: BaseException) -> str:
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if "/sglang/" in f.filename.replace(os.sep, "/")
    ]
    return _where(frames[-1].filename, frames[-1].lineno) if frames else f"sglang@{VERSION}"


class _Out:
    """The findings of one answer, naming recipe fields through the request's maps."""

    def __init__(self, req: dict):
        self.flags: dict[str, str] = dict(req.get("flags") or {})
        self.fields: dict[str, str] = dict(req.get("flag_fields") or {})
        self.findings: list[dict] = []

    def name(self, flag: str) -> str:
        return self.fields.get(flag, flag) if flag else "sglang"

    def add(
        self, flag: str, message: str, rule: str, source: str, severity: str = "error", **extra: Any
    ) -> None:
        self.findings.append(
            {
                "field": self.name(flag),
                "message": message,
                "rule": rule,
                "source": source,
                "severity": severity,
                "extra": extra,
            }
        )

    def flag_of(self, fields: list[str], text: str) -> str:
        """The flag an SGLang message is about: the first field named that the argv sets
        directly, else a known phrase, else the flag a derived field comes from, else the engine size."""
        derived = []
        for f in fields:
            flag = self.flags.get(f) or (self.flags.get("dp_size") if f == "attn_dp_size" else None)
            if flag is None:
                continue
            if flag == GPUS_PER_ENGINE or f in DERIVED_FLAGS:
                derived.append(flag)
            else:
                return flag
        low = text.lower()
        return next(
            (flag for phrase, flag in PHRASE_FLAGS if phrase in low),
            derived[0] if derived else GPUS_PER_ENGINE,
        )


def _verdict(out: _Out, ServerArgs: Any, kw: dict, fields: list[str]) -> None:
    """Construct, resolve and check ``ServerArgs(**kw)``; its exceptions and silent changes."""
    stage, call = "construct", "ServerArgs(...)"
    try:
        sa = ServerArgs(**kw)
        stage, call = "resolve", "ServerArgs.resolve_once"
        if hasattr(sa, "resolve_once"):
            sa.resolve_once()
        stage, call = "check", "ServerArgs.check_server_args"
        if hasattr(sa, "check_server_args"):
            sa.check_server_args()
    except (Exception, SystemExit) as exc:
        msg = f"SystemExit({exc.code})" if isinstance(exc, SystemExit) else str(exc)
        src = _assert_source(exc) if isinstance(exc, AssertionError) else ""
        named = _fields_named(f"{msg} {src}", fields)
        flag = out.flag_of(named, f"{msg} {src}")
        if src:
            msg = f"{msg} [{src}]" if msg else src
        values = ", ".join(f"{f}={json.dumps(_jsonable(kw[f]))}" for f in named if f in kw)
        involved = [out.name(fl) for fl in (out.flags.get(f) for f in named) if fl]
        out.add(
            flag,
            f"SGLang {VERSION} rejects the rollout engine config: {type(exc).__name__}: {msg}"
            + (f" (engine values: {values})" if values else ""),
            f"{call} succeeds",
            _raised_at(exc),
            fields=list(dict.fromkeys([out.name(flag), *involved])),
            exception=type(exc).__name__,
            stage=stage,
        )
        return
    try:
        resolved = sa.resolved_dict() if hasattr(sa, "resolved_dict") else {f: getattr(sa, f) for f in fields}
    except Exception:
        resolved = {f: getattr(sa, f, None) for f in fields}
    for key in WATCHED:
        before, after = _jsonable(kw.get(key)), _jsonable(resolved.get(key))
        if key in kw and key in resolved and before != after and key in out.flags:
            out.add(
                out.flags[key],
                f"SGLang {VERSION} changes {key} from {before!r} to {after!r} while resolving",
                f"{key} is kept as given",
                _defined_at(ServerArgs.resolve_once),
                "warning",
            )


def run(req: dict) -> dict:
    global VERSION
    ans: dict[str, Any] = {
        "available": False,
        "import_error": "",
        "sglang_version": "",
        "findings": [],
        "timings": {},
    }
    if _find_spec("sglang") is None:
        ans["import_error"] = f"no module named 'sglang' in {sys.executable}"
        return ans
    VERSION = ans["sglang_version"] = _sglang_version()
    t0 = time.monotonic()
    try:
        ans["stubs"] = install_stubs()
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from sglang.srt.server_args import ServerArgs
    except BaseException as exc:  # ImportError, or anything a broken install raises on import
        ans["import_error"] = (
            f"sglang {VERSION} is installed but `from sglang.srt.server_args import ServerArgs` "
            f"failed: {type(exc).__name__}: {exc}"
        )
        return ans
    ans["available"] = True
    ans["timings"]["import_s"] = round(time.monotonic() - t0, 2)
    out = _Out(req)
    fields = _field_names(ServerArgs)
    fset = set(fields)
    kw = dict(req.get("kwargs") or {})
    parser_src = (
        f"{_defined_at(ServerArgs.add_cli_args)}; miles/backends/sglang_utils/arguments.py:65-135 ({MILES})"
    )

    parsed, notes, refused = _parse_tokens(ServerArgs, list(req.get("sglang_tokens") or []), fset)
    rejected = set()
    for note in notes:
        flag = note.get("flag", "")
        if note["kind"] == "parser_unavailable":
            out.add(
                "",
                f"the --sglang-* flags were not parsed: {note['message']}",
                "SGLang's parser builds",
                parser_src,
                "warning",
            )
        elif note["kind"] == "flag_skipped_by_miles":
            out.add(
                flag,
                f"miles sets this ServerArgs value itself and does not accept {flag} "
                f"(e.g. nnodes from {GPUS_PER_ENGINE}); remove it",
                "miles-owned ServerArgs fields are not --sglang-* flags",
                f"miles/backends/sglang_utils/arguments.py:39-59 ({MILES})",
                "warning",
            )
        else:
            rejected.add(flag)
            hint = (
                "; did you mean " + " / ".join("--sglang-" + s.replace("_", "-") for s in note["similar"])
                if note.get("similar")
                else ""
            )
            if "cuda-graph-bs" in flag and "decode" not in flag and "cuda_graph_bs_decode" in fset:
                hint = "; this SGLang spells it --sglang-cuda-graph-bs-decode"
            verb = "rejects" if note["kind"] == "flag_rejected" else "has no such flag:"
            out.add(
                flag,
                f"SGLang {VERSION}'s argument parser (which miles reuses for --sglang-*) {verb} {flag}: "
                f"{note['message']}{hint}",
                "every --sglang-* flag is a ServerArgs flag of the installed SGLang",
                parser_src,
            )
    for k in refused:
        kw.pop(k, None)
    for k, v in parsed.items():
        if k not in kw and k in fset:
            kw[k] = v
    if "cuda_graph_bs" in kw and "cuda_graph_bs" not in fset:  # renamed in this SGLang
        bs = kw.pop("cuda_graph_bs")
        if "cuda_graph_bs_decode" in fset:
            kw["cuda_graph_bs_decode"] = bs
        flag = out.flags.get("cuda_graph_bs", "")
        if flag and flag not in rejected:
            new = "cuda_graph_bs_decode" if "cuda_graph_bs_decode" in fset else "?"
            out.add(
                flag,
                f"SGLang {VERSION} has no cuda_graph_bs (now {new}); miles' parser rejects {flag}",
                "every --sglang-* flag is a ServerArgs flag of the installed SGLang",
                _defined_at(ServerArgs),
            )
    # dp-attention: the deprecated spelling, rewritten the way SGLang's own
    # handle_deprecated_dp_attention does, so that it also works once the old field is gone.
    if kw.get("enable_dp_attention") and "attn_dp_size" in fset:
        dp = int(kw.get("dp_size") or 1)
        if int(kw.get("attn_dp_size") or 1) == 1:
            kw["attn_dp_size"], kw["dp_size"] = dp, 1
        kw.pop("enable_dp_attention")
        flag, both = (
            "--sglang-enable-dp-attention",
            [out.name("--sglang-enable-dp-attention"), out.name("--sglang-dp-size")],
        )
        try:
            from sglang.srt.arg_groups.parallel_hook import handle_deprecated_dp_attention as hook

            src = _defined_at(hook)
        except ImportError:
            src = _defined_at(ServerArgs)
        if "enable_dp_attention" in fset:
            out.add(
                flag,
                f"SGLang {VERSION} renames dp-attention: the trainer passes `--sglang-dp-size {dp} "
                "--sglang-enable-dp-attention` (deprecated there, due for removal), which SGLang rewrites to "
                f"attn_dp_size={dp}, dp_size=1; the new spelling is `--sglang-attn-dp-size {dp}`",
                "enable_dp_attention + dp_size -> attn_dp_size",
                src,
                "warning",
                fields=both,
                spelling="--sglang-dp-size N --sglang-enable-dp-attention",
            )
        else:
            out.add(
                flag,
                f"SGLang {VERSION} no longer has enable_dp_attention: `--sglang-enable-dp-attention` is not "
                f"a flag there; pass `--sglang-attn-dp-size {dp}` instead of `--sglang-dp-size {dp}`",
                "attn_dp_size replaces enable_dp_attention + dp_size",
                src,
                fields=both,
            )
    for k in sorted(k for k in kw if k not in fset):
        kw.pop(k)
        flag = out.flags.get(k, "")
        if flag not in rejected:
            out.add(
                flag,
                f"SGLang {VERSION}'s ServerArgs has no field {k}; miles drops it with a log line",
                "ServerArgs field exists",
                f"{_defined_at(ServerArgs)}; miles/backends/sglang_utils/sglang_engine.py:805-817 ({MILES})",
                "warning",
            )
    t1 = time.monotonic()
    _verdict(out, ServerArgs, kw, fields)
    ans["timings"]["resolve_s"] = round(time.monotonic() - t1, 2)
    ans["findings"] = out.findings
    return ans


def main() -> int:
    # SGLang and transformers print to stdout here and there: keep stdout for the answer only.
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        res = run(json.loads(sys.stdin.read() or "{}"))
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
