"""Downloads with huggingface_hub into the shared ``base_dir``, and their verification.

What is fetched (:func:`hub_items`): the recipe's model (``ModelSpec.hf_repo`` into
``checkpoint.hf_checkpoint``), its FP8 copy when ``sglang.fp8_rollout`` is set (into
``checkpoint.hf_checkpoint_fp8``) and the task's datasets into the directories the trainer reads
them from (the seed's layout: ``$BASE_DIR/dapo-math-17k``, ``$BASE_DIR/rl_data/aime-2024``, the seed's set-up that
:data:`glmlaunch.resolve.TASKS` records; miles scripts/run_glm45_355b_a32b.py:42-56 (miles@31f1ca961a94)).

Each repo is pinned to the commit the Hub reports (``HfApi.repo_info``) and fetched with
``snapshot_download(local_dir=...)``, which resumes: a file finished earlier is recorded in
``<local_dir>/.cache/huggingface/`` and not fetched again, a partial one continues from its
``.incomplete`` bytes. The token is huggingface_hub's own (``HF_TOKEN`` or ``hf auth login``);
glmlaunch never reads, logs or prints it. ``HF_ENDPOINT`` moves the Hub (the tests' local one).

Verification (:func:`verify_item`): every file of the pinned revision is present with the size
the Hub reports and, for LFS files, the sha256 the Hub reports. A verified item is stamped
(``<local_dir>/.cache/glmlaunch/verified-<commit>.json``: each file's size and mtime), so a rerun
hashes only what changed since.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from ..errors import PrepareError, UsageError
from ..models import get_model
from ..progress import NullReporter, Reporter
from ..recipe import Recipe
from ..resolve import paths

# The datasets of each task (rollout.task): the prompt data's and the eval data's repos.
# miles scripts/run_glm45_355b_a32b.py:47-53 (miles@31f1ca961a94); the seed's bash recipe
# downloads the first two.
TASK_DATASETS = {
    "dapo_aime": {"prompt": "zhuzilin/dapo-math-17k", "eval": "zhuzilin/aime-2024"},
    "gsm8k": {"prompt": "zhuzilin/gsm8k", "eval": "zhuzilin/gsm8k"},
}

STAMP_DIR = ".cache/glmlaunch"


@dataclass(frozen=True)
class HubItem:
    """One repo to fetch: ``repo_type`` ``model`` or ``dataset``, into ``local_dir`` (absolute),
    for the recipe field ``field`` that names that directory."""

    repo_id: str
    repo_type: str
    local_dir: str
    field: str
    revision: str | None = None


class RemoteFile(BaseModel):
    """A file of a pinned revision: ``size`` in bytes, ``sha256`` for LFS files (else ``None``)."""

    path: str
    size: int
    sha256: str | None = None
    will_download: bool = True


class ItemPlan(BaseModel):
    """A repo pinned to ``commit``, with its files (``will_download``: not complete locally yet)."""

    repo_id: str
    repo_type: str
    local_dir: str
    field: str
    commit: str
    files: list[RemoteFile] = Field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def fetch_bytes(self) -> int:
        return sum(f.size for f in self.files if f.will_download)


def hub_items(recipe: Recipe) -> list[HubItem]:
    """The repos ``recipe`` needs (model, FP8 copy, datasets), each with its target directory.

    ``recipe`` is the resolved recipe (``Resolved.recipe``: the task's values filled in). The
    datasets' directories are those of the trainer's ``--prompt-data`` and ``--eval-prompt-data``
    files (eval only when ``eval.enabled``); two that share a directory are fetched once.
    Raises :class:`RecipeError` for an unknown model type.
    """
    spec = get_model(recipe.model.type)
    c = recipe.checkpoint
    out = [
        HubItem(spec.hf_repo, "model", recipe.expand(c.hf_checkpoint).rstrip("/"), "checkpoint.hf_checkpoint")
    ]
    if recipe.sglang.fp8_rollout:
        out.append(
            HubItem(
                spec.hf_repo_fp8,
                "model",
                recipe.expand(c.hf_checkpoint_fp8).rstrip("/"),
                "checkpoint.hf_checkpoint_fp8",
            )
        )
    p = paths(recipe)
    ds = TASK_DATASETS[recipe.rollout.task]
    wanted = [("prompt", "prompt_data", "rollout.prompt_data")]
    if recipe.eval.enabled:
        wanted.append(("eval", "eval_data", "eval.prompt_data"))
    seen = {i.local_dir for i in out}
    for key, path_key, field in wanted:
        d = os.path.dirname(p[path_key])
        if d not in seen:
            seen.add(d)
            out.append(HubItem(ds[key], "dataset", d, field))
    return out


# ----------------------------------------------------------------------------- errors


def hub_error(e: BaseException, item: HubItem) -> PrepareError:
    """A huggingface_hub error as one message about ``item`` with a fix (never the token)."""
    from huggingface_hub import errors as hfe

    url = f"https://huggingface.co/{'datasets/' if item.repo_type == 'dataset' else ''}{item.repo_id}"
    what = f"{item.repo_type} {item.repo_id} (for {item.field})"
    if isinstance(e, hfe.GatedRepoError):
        return PrepareError(
            f"{what} is gated: this account has not been granted access",
            {item.repo_id: "gated"},
            f"accept the conditions at {url}, then log in (`hf auth login`) or set HF_TOKEN",
        )
    if isinstance(e, hfe.RepositoryNotFoundError):
        return PrepareError(
            f"{what} was not found on the Hub (or it is private and this account cannot see it)",
            {item.repo_id: "not found"},
            "check model.type / rollout.task (they name the repos), or log in (`hf auth login`) / set HF_TOKEN "
            "for a private repo",
        )
    if isinstance(e, hfe.RevisionNotFoundError):
        return PrepareError(f"{what}: revision {item.revision} not found", {item.repo_id: "no such revision"})
    if isinstance(e, hfe.HfHubHTTPError):
        code = e.response.status_code if e.response is not None else None
        if code in (401, 403):
            return PrepareError(
                f"{what}: the Hub refused access (HTTP {code})",
                {item.repo_id: f"HTTP {code}"},
                "log in (`hf auth login`) or set HF_TOKEN to a token with read access",
            )
        return PrepareError(
            f"{what}: the Hub answered HTTP {code}: {str(e).splitlines()[0]}", {item.repo_id: str(code)}
        )
    return PrepareError(
        f"{what}: cannot download: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
        {item.repo_id: type(e).__name__},
        "check this machine's network path to the Hub (HF_ENDPOINT, proxies); the download resumes where it stopped",
    )


def _hub_call(item: HubItem, fn: Callable, *args, **kw):
    from huggingface_hub import errors as hfe

    try:
        return fn(*args, **kw)
    except (hfe.HfHubHTTPError, OSError, ValueError) as e:
        raise hub_error(e, item) from None
    except Exception as e:  # httpx's transport errors are not OSError
        if type(e).__module__.startswith(("httpx", "httpcore")):
            raise hub_error(e, item) from None
        raise


# ----------------------------------------------------------------------------- plan / dry run


@contextlib.contextmanager
def _quiet_hub():
    """huggingface_hub's progress bars off, and its log records kept from the terminal (they go
    to glmlaunch's handlers: the CLI writes them to glmlaunch.log), while a call runs."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from huggingface_hub.utils import logging as hf_logging

    was_off = are_progress_bars_disabled()
    disable_progress_bars()
    hf_root = hf_logging.get_logger()
    handlers, propagate = hf_root.handlers[:], hf_root.propagate
    for h in handlers:
        hf_root.removeHandler(h)
    hf_root.propagate = True
    try:
        yield
    finally:
        hf_root.propagate = propagate
        for h in handlers:
            hf_root.addHandler(h)
        if not was_off:
            enable_progress_bars()


def free_bytes(path: str) -> int:
    """Free bytes for an unprivileged writer on the filesystem that holds ``path`` (or its
    nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def _device(path: str) -> int:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return p.stat().st_dev


def plan_item(item: HubItem, api=None) -> ItemPlan:
    """Pin ``item`` to the Hub's commit and list its files: size and LFS sha256
    (``repo_info(files_metadata=True)``), and which are not complete in ``local_dir`` yet
    (``snapshot_download(dry_run=True)``: huggingface_hub's own answer, which keeps its
    bookkeeping in ``<local_dir>/.cache/huggingface``; a ``local_dir`` that does not exist yet is
    not created: every file is to fetch). Raises
    :class:`PrepareError` (gated, missing, unreachable)."""
    from huggingface_hub import HfApi, snapshot_download

    api = api or HfApi()
    info = _hub_call(
        item,
        api.repo_info,
        item.repo_id,
        repo_type=item.repo_type,
        revision=item.revision,
        files_metadata=True,
    )
    files = {}
    for s in info.siblings or []:
        lfs = getattr(s, "lfs", None)
        sha = (lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)) if lfs else None
        files[s.rfilename] = RemoteFile(path=s.rfilename, size=int(s.size or 0), sha256=sha)
    if not Path(item.local_dir).is_dir():  # nothing there yet: every file is to fetch, and
        return _item_plan(item, info.sha, files)  # huggingface_hub's dry run would create .cache/
    with _quiet_hub():
        dry = _hub_call(
            item,
            snapshot_download,
            item.repo_id,
            repo_type=item.repo_type,
            revision=info.sha,
            local_dir=item.local_dir,
            dry_run=True,
        )
    for d in dry:
        if d.filename in files:
            files[d.filename].will_download = bool(d.will_download)
    return _item_plan(item, info.sha, files)


def _item_plan(item: HubItem, commit: str, files: dict[str, RemoteFile]) -> ItemPlan:
    return ItemPlan(
        repo_id=item.repo_id,
        repo_type=item.repo_type,
        local_dir=item.local_dir,
        field=item.field,
        commit=commit,
        files=sorted(files.values(), key=lambda f: f.path),
    )


def check_space(plans: list[ItemPlan], free: Callable[[str], int] | None = None) -> dict[str, str]:
    """Items whose filesystem has less free space than what is left to fetch onto it (items on
    one filesystem are added up): ``{local_dir: why}``, empty when everything fits. ``free``:
    bytes free at a path (default :func:`free_bytes`)."""
    free = free or free_bytes
    by_dev: dict[int, list[ItemPlan]] = {}
    for p in plans:
        by_dev.setdefault(_device(p.local_dir), []).append(p)
    short = {}
    for group in by_dev.values():
        need = sum(p.fetch_bytes for p in group)
        have = free(group[0].local_dir)
        if need > have:
            for p in group:
                short[p.local_dir] = f"needs {_gib(need)} in all on its filesystem, {_gib(have)} free"
    return short


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


# ----------------------------------------------------------------------------- download


def _bytes_on_disk(plan: ItemPlan) -> int:
    """Bytes of ``plan``'s files in ``local_dir`` so far: finished files plus huggingface_hub's
    ``.incomplete`` parts."""
    root = Path(plan.local_dir)
    n = 0
    for f in plan.files:
        try:
            n += (root / f.path).stat().st_size
        except OSError:
            pass
    part = root / ".cache" / "huggingface" / "download"
    if part.is_dir():
        for q in part.rglob("*.incomplete"):
            try:
                n += q.stat().st_size
            except OSError:
                pass
    return n


def download_item(
    plan: ItemPlan, reporter: Reporter | None = None, *, max_workers: int = 8, every_s: float = 1.0
) -> None:
    """Fetch ``plan``'s revision into its ``local_dir`` (resumable; see the module). Progress (bytes
    and rate) goes to ``reporter.progress`` about every ``every_s`` seconds; huggingface_hub's own
    progress bars are off while it runs (the library never prints). Raises :class:`PrepareError`."""
    from huggingface_hub import snapshot_download

    reporter = reporter or NullReporter()
    item = HubItem(plan.repo_id, plan.repo_type, plan.local_dir, plan.field, plan.commit)
    Path(plan.local_dir).mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    total = plan.total_bytes

    def watch() -> None:
        t0, b0 = time.monotonic(), _bytes_on_disk(plan)
        while not stop.wait(every_s):
            b = _bytes_on_disk(plan)
            dt = time.monotonic() - t0
            reporter.progress("download", plan.repo_id, b, total, (b - b0) / dt if dt > 0 else None)

    th = threading.Thread(target=watch, daemon=True, name=f"download-progress {plan.repo_id}")
    th.start()
    try:
        with _quiet_hub():
            _hub_call(
                item,
                snapshot_download,
                plan.repo_id,
                repo_type=plan.repo_type,
                revision=plan.commit,
                local_dir=plan.local_dir,
                max_workers=max_workers,
            )
    finally:
        stop.set()
        th.join(timeout=5)
    reporter.progress("download", plan.repo_id, _bytes_on_disk(plan), total, None)


# ----------------------------------------------------------------------------- verify


def _stamp_path(plan: ItemPlan) -> Path:
    return Path(plan.local_dir) / STAMP_DIR / f"verified-{plan.commit}.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_item(plan: ItemPlan, *, stamp: bool = True) -> dict[str, str]:
    """Check every file of ``plan`` in its ``local_dir``: present (a regular file), the Hub's size,
    and the Hub's sha256 for LFS files (skipped for a file the stamp records with the same size
    and mtime). Returns ``{file: problem}`` (empty: verified, and the stamp is written)."""
    root = Path(plan.local_dir)
    sp = _stamp_path(plan)
    try:
        old = json.loads(sp.read_text()) if sp.is_file() else {}
    except (OSError, ValueError):
        old = {}
    problems: dict[str, str] = {}
    new = {}
    for f in plan.files:
        p = root / f.path
        try:
            st = p.stat()
        except OSError:
            problems[f.path] = "missing"
            continue
        if not p.is_file():
            problems[f.path] = "not a regular file"
            continue
        if st.st_size != f.size:
            problems[f.path] = f"size {st.st_size} bytes, the Hub says {f.size}"
            continue
        mark = [st.st_size, st.st_mtime_ns, f.sha256]
        if f.sha256 and old.get(f.path) != mark:
            got = _sha256(p)
            if got != f.sha256:
                problems[f.path] = f"sha256 {got[:12]}…, the Hub says {f.sha256[:12]}…"
                continue
        new[f.path] = mark
    if not problems and stamp:
        sp.parent.mkdir(parents=True, exist_ok=True)
        tmp = sp.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(new))
        tmp.replace(sp)
    return problems


def is_verified(plan: ItemPlan) -> bool:
    """Whether the stamp of ``plan``'s commit matches every file's size and mtime now (a cheap
    check: no hashing)."""
    sp = _stamp_path(plan)
    try:
        old = json.loads(sp.read_text())
    except (OSError, ValueError):
        return False
    root = Path(plan.local_dir)
    for f in plan.files:
        try:
            st = (root / f.path).stat()
        except OSError:
            return False
        if old.get(f.path) != [st.st_size, st.st_mtime_ns, f.sha256]:
            return False
    return True


def refuse_probe(recipe: Recipe) -> None:
    """Raise :class:`UsageError` for a recipe with nothing to prepare (the probe)."""
    if recipe.trainer.kind != "miles":
        raise UsageError(
            f"recipe {recipe.run.name}: trainer.kind = {recipe.trainer.kind!r} has no checkpoint to prepare",
            "prepare a miles recipe (glmlaunch templates lists them)",
        )
