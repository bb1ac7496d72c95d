"""Launch from your own script: `from glmlaunch import launch; launch(recipe)`.

    python examples/launch_from_python.py                       # the probe on this machine
    python examples/launch_from_python.py glm45-355b-a32b-gspo /root/mpi_rack_hostfile

Library calls never print or exit; this script decides what to show. A progress Reporter
prints each step and per-host state; errors carry the fix in `.hint`.
"""

import sys

from glmlaunch import GlmlaunchError, launch
from glmlaunch.progress import Reporter


class Print(Reporter):
    def step(self, name, total=None):
        print(f"> {name}")

    def host(self, step, host, state, detail=""):
        print(f"    {host}: {state} {detail}")

    def done(self, name, ok=True, detail=""):
        print(f"{'ok' if ok else 'FAILED'}: {name} {detail}")

    def log_line(self, text):
        sys.stdout.write(text)


recipe = sys.argv[1] if len(sys.argv) > 1 else "local-probe"
hostfile = sys.argv[2] if len(sys.argv) > 2 else None
try:
    result = launch(
        recipe,
        hostfile,
        local=hostfile is None and recipe == "local-probe",
        runs_dir="runs",
        reporter=Print(),
    )
except GlmlaunchError as e:
    print(f"error: {e.message}\nfix: {e.hint}", file=sys.stderr)
    raise SystemExit(e.exit_code) from None
print(f"job {result.job.status} (exit code {result.job.exit_code}); run directory {result.run_dir}")
if result.probe:
    print("probe:", "passed" if result.probe["ok"] else result.probe["problems"])
raise SystemExit(0 if result.ok else 1)
