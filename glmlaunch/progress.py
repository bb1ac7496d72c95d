"""Progress reporting. Library code reports steps and per-host states through a
:class:`Reporter`; it never prints. The default reporter logs; the CLI passes a rich one.
"""

from __future__ import annotations

import logging

log = logging.getLogger("glmlaunch")


class Reporter:
    """Receives progress. Override what you need; every method is optional."""

    def step(self, name: str, total: int | None = None) -> None:
        """A step started (``total``: hosts it covers, if per host)."""
        log.info("%s", name)

    def host(self, step: str, host: str, state: str, detail: str = "") -> None:
        """One host finished (``state``: ``ok`` / ``failed`` / ``waiting``) a step."""
        (log.warning if state == "failed" else log.info)("%s: %s %s %s", step, host, state, detail)

    def done(self, name: str, ok: bool = True, detail: str = "") -> None:
        """A step ended."""
        (log.info if ok else log.warning)("%s %s %s", name, "done" if ok else "failed", detail)

    def progress(self, step: str, what: str, done: int, total: int | None, rate: float | None = None) -> None:
        """Bytes moved so far in a long step (``done``/``total`` bytes, ``rate`` bytes per second)."""
        log.debug("%s: %s %d/%s bytes", step, what, done, total)

    def findings(self, title: str, findings: list) -> None:
        """Check results worth showing even when nothing failed (warnings), errors first."""
        for f in findings:
            (log.error if f.severity == "error" else log.warning)("%s: %s", title, f)

    def log_line(self, text: str) -> None:
        """A chunk of the trainer's log (already ends with a newline where the trainer wrote one)."""
        log.info("%s", text.rstrip("\n"))


class NullReporter(Reporter):
    def step(self, name, total=None):
        pass

    def findings(self, title, findings):
        pass

    def progress(self, step, what, done, total, rate=None):
        pass

    def host(self, step, host, state, detail=""):
        pass

    def done(self, name, ok=True, detail=""):
        pass

    def log_line(self, text):
        pass
