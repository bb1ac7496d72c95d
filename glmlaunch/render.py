"""Renderings of a :class:`~glmlaunch.plan.LaunchPlan`: JSON (``plan.json``, ``render --format
json``) and a readable bash script (``commands.sh``, ``render --format bash``, ``launch --dry-run``).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import shlex
from typing import TYPE_CHECKING

from .nodeops import shell_env_args
from .plan import LaunchPlan

if TYPE_CHECKING:
    import jinja2


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def render_json(plan: LaunchPlan) -> str:
    """The plan as JSON (``argv``, ``env_vars``, ``nodes`` with ``ray_start``, ``submit``); read it
    back with ``LaunchPlan.model_validate_json``."""
    return plan.model_dump_json(indent=2) + "\n"


BASH_TEMPLATE = "commands.sh.j2"
"""The bash script's text: ``glmlaunch/templates/commands.sh.j2`` (Jinja2), shipped in the package."""


def _quote_in_double_quotes(value: object) -> str:
    """``value`` for the inside of a double-quoted shell string: as it is when it is one plain
    shell word, else its :func:`shlex.quote` spliced in (``"see "'/a b'" on x"``)."""
    s = str(value)
    q = shlex.quote(s)
    return s if q == s else f'"{q}"'


def _quote_in_comment(value: object) -> str:
    """``value`` for a ``#`` comment: :func:`shlex.quote`, with newlines written ``\\n``."""
    return shlex.quote(str(value)).replace("\r", "\\r").replace("\n", "\\n")


@functools.cache
def _bash_template() -> jinja2.Template:
    import jinja2  # here, not at the top: most commands never render bash, and jinja2 takes ~70 ms

    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        q=lambda v: shlex.quote(str(v)),
        qq=_quote_in_double_quotes,
        cq=_quote_in_comment,
        plural=_plural,
        json=json.dumps,
        pyrepr=repr,
    )
    env.globals["env_args"] = shell_env_args()
    source = (importlib.resources.files(__package__) / "templates" / BASH_TEMPLATE).read_text()
    return env.from_string(source)


def render_bash(plan: LaunchPlan) -> str:
    """A readable bash script that does what the plan does, for people who want to read or run it
    by hand: head first, workers in parallel with each exit status checked, a bounded wait for
    every node and GPU, then the job submit. No ``${VAR}`` is left for a node to expand; secrets
    are read from the environment of the shell that runs the script, into a mode-600 file.
    The text is :data:`BASH_TEMPLATE`; every value in it goes through :func:`shlex.quote` (the
    ``cluster.setup`` entries, shell commands by design, are inserted as written)."""
    return _bash_template().render(plan=plan)
