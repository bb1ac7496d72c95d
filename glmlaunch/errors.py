"""Errors and check findings shared by every glmlaunch module.

Library code raises these and never prints or exits; the CLI turns them into a message and
the error's :attr:`~GlmlaunchError.exit_code`, one table for every command:

====  ==========================================================================
code  meaning
====  ==========================================================================
0     success
1     a runtime failure (:class:`ClusterError`, :class:`TransportError`, :class:`JobError`,
      :class:`PrepareError`),
      or checks that failed (:class:`CheckFailed`)
2     bad input, nothing touched (:class:`UsageError`: a bad option or option pair;
      :class:`HostfileError`; :class:`RecipeError`)
N     ``launch``/``submit``: the trainer's own exit status when it failed
130   interrupted (Ctrl-C, SIGTERM): the job and the cluster were stopped first
====  ==========================================================================

Every error says what is wrong and what to do next.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from dataclasses import dataclass

_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def safe_text(value: object, keep_newlines: bool = True) -> str:
    """``value`` as text that cannot drive a terminal: control and format characters (ESC, CR,
    BEL, backspace, bidi overrides, line separators) are written as escapes (``\\x1b``,
    ``\\u202e``); newlines stay when ``keep_newlines``. Printable text is returned as it is."""
    s = str(value)
    if s.isprintable():  # no Cc, Cf, Cs, Co, Zl, Zp (nor newlines)
        return s
    out = []
    for c in s:
        if (
            (c == "\n" and keep_newlines)
            or c.isprintable()
            or unicodedata.category(c) not in _UNSAFE_CATEGORIES
        ):
            out.append(c)
        else:
            o = ord(c)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
    return "".join(out)


class GlmlaunchError(Exception):
    """Base class of every error glmlaunch raises on purpose.

    ``hint`` is the next step for the user; the CLI prints it after the message.
    ``exit_code`` is the CLI's exit status for this error (see the module's table).
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  fix: {self.hint}"


class UsageError(GlmlaunchError):
    """Bad input found before anything was touched: an option, or a pair of options, that cannot
    be used (exit 2)."""

    exit_code = 2


class HostfileError(UsageError):
    """A hostfile or Slurm allocation that cannot be used (names the file and line)."""


class RecipeError(UsageError):
    """A recipe file, field or override that cannot be used (names the field)."""


class CheckFailed(GlmlaunchError):
    """One or more checks failed; ``findings`` holds every finding, errors first."""

    def __init__(self, findings: list[Finding], hint: str | None = None):
        self.findings = sorted(findings, key=lambda f: f.severity != "error")
        errors = [f for f in self.findings if f.severity == "error"]
        super().__init__(
            f"{len(errors)} check(s) failed:\n" + "\n".join(f"  - {f}" for f in errors),
            hint or "fix the recipe fields named above (or override them with --set KEY=VALUE) and run again",
        )


class TransportError(GlmlaunchError):
    """A command could not be run on one or more hosts (per-host detail in ``failures``)."""

    def __init__(self, message: str, failures: dict[str, str] | None = None, hint: str | None = None):
        super().__init__(message, hint)
        self.failures = failures or {}


class ClusterError(GlmlaunchError):
    """The Ray cluster could not be started or is not complete (names the hosts)."""

    def __init__(self, message: str, missing: dict[str, str] | None = None, hint: str | None = None):
        super().__init__(message, hint)
        self.missing = missing or {}


class JobError(GlmlaunchError):
    """The trainer job could not be submitted, followed or stopped."""


class PrepareError(GlmlaunchError):
    """A preparation step (download, verification, shared-filesystem check, conversion, node-local
    copy) failed; ``failures`` maps a node or a file to what went wrong there."""

    def __init__(self, message: str, failures: dict[str, str] | None = None, hint: str | None = None):
        super().__init__(message, hint)
        self.failures = failures or {}


@dataclass(frozen=True)
class Finding:
    """One result of a check.

    ``field`` is the recipe field (dotted) or the input it concerns, ``rule`` the rule that was
    applied and ``source`` where the rule comes from (the miles flag or file, the Megatron check,
    the SGLang check). ``severity`` is ``"error"`` (launch refused) or ``"warning"``.
    """

    field: str
    message: str
    rule: str = ""
    source: str = ""
    severity: str = "error"
    extra: dict = dataclasses.field(default_factory=dict, compare=False, hash=False)

    def __str__(self) -> str:
        s = f"{self.field}: {self.message}"
        if self.source:
            s += f" [{self.source}]"
        return s


class Findings(list):
    """Check results, errors first (a ``list`` of :class:`Finding`)."""

    def __init__(self, findings=()):
        super().__init__(sorted(findings, key=lambda f: f.severity != "error"))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self if f.severity != "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self, hint: str | None = None) -> None:
        """Raise :class:`CheckFailed` (with every finding) when any finding is an error."""
        if self.errors:
            raise CheckFailed(list(self), hint=hint)
