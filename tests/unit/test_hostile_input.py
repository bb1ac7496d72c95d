"""Hostile and malformed input, through the ``glmlaunch`` CLI: every row gets exit 2 (1 where the
recipe × cluster checks fail), exactly one ``error:`` line that names the input (``file:line``,
the variable, the field or the option), a ``fix:`` line, no traceback, no run directory, no raw
control character on the terminal, and no hang.

One table; each row is a command line. In ``args``, ``{hf}`` is the row's hostfile (``hostfile``
written there), ``{recipe}`` its recipe file (``recipe`` written there, suffix ``suffix``) and
``{x}`` a special file made by ``make`` (a FIFO, a symlink loop, a directory, a big file).
``env`` is the environment of the command (Slurm variables); ``needle`` is a substring of the
error message, with the same placeholders.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from glmlaunch import hosts as hosts_mod

EIGHT = "".join(f"10.0.0.{i} slots=8\n" for i in range(1, 9))
GSPO = "glm45-355b-a32b-gspo"
RECIPE_OK = '[run]\nname = "x"\nbase_dir = "/x"\n[cluster]\nnodes = 1\n'
YAML_OK = "run:\n  name: x\n  base_dir: /x\ncluster:\n  nodes: 1\n"
BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{b}: &{b} [{', '.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)
HET = {
    "SLURM_JOB_NODELIST": "cpu[9-10],node[01-02]",
    "SLURM_JOB_NODELIST_HET_GROUP_0": "cpu[9-10]",
    "SLURM_JOB_NODELIST_HET_GROUP_1": "node[01-02]",
}


@dataclass
class Row:
    id: str
    args: tuple[str, ...]
    needle: str
    hostfile: str | bytes | None = None
    recipe: str | None = None
    suffix: str = ".toml"
    make: str | None = None  # fifo | loop | dir | big | default-fifo
    env: dict = field(default_factory=dict)
    code: int = 2


def hosts(hf: str | bytes, needle: str, rid: str, *extra: str) -> Row:
    return Row(rid, ("hosts", "--hostfile", "{hf}", *extra), needle, hostfile=hf)


def slurm(env: dict, needle: str, rid: str, cmd: str = "hosts") -> Row:
    args = ("hosts",) if cmd == "hosts" else (cmd, "local-probe")
    return Row(rid, args, needle, env={"SLURM_JOB_NODELIST": "node[01-02]", **env})


def recipe(text: str, needle: str, rid: str, suffix: str = ".toml", cmd: str = "check") -> Row:
    return Row(rid, (cmd, "{recipe}", "--nodes", "1"), needle, recipe=text, suffix=suffix)


def override(item: str, needle: str, rid: str, cmd: str = "check") -> Row:
    where = ("--local", "--dry-run") if cmd == "launch" else ("--nodes", "1")  # launch has no --nodes
    return Row(rid, (cmd, "local-probe", *where, "--set", item), needle)


ROWS = [
    # ------------------------------------------------------------ hostfiles: numbers
    hosts("10.0.0.1 slots=²\n", "{hf}:1: slots=² is not a positive whole number", "hf-slots-superscript"),
    hosts("10.0.0.1 slots=٣\n", "{hf}:1: slots=٣ is not a positive whole number", "hf-slots-arabic-indic"),
    hosts("10.0.0.1 slots=８\n", "{hf}:1: slots=８ is not a positive whole number", "hf-slots-fullwidth"),
    hosts("10.0.0.1 slot=+8\n", "{hf}:1: slot=+8 is not a positive whole number", "hf-slot-plus"),
    hosts(
        "10.0.0.1 slots=8 max_slots=²\n",
        "{hf}:1: max_slots=² is not a positive whole number",
        "hf-max-slots-sup",
    ),
    hosts(
        "10.0.0.1 ssh_port=٢٢\n", "{hf}:1: ssh_port=٢٢ is not a positive whole number", "hf-ssh-port-arabic"
    ),
    hosts(
        "node1:²\n",
        "{hf}:1: cannot read 'node1:²': the count after ':' must be a whole number",
        "hf-mpich-sup",
    ),
    hosts(
        "node1:٣\n",
        "{hf}:1: cannot read 'node1:٣': the count after ':' must be a whole number",
        "hf-mpich-ar",
    ),
    hosts("[::1]:" + "9" * 30 + "\n", "{hf}:1: cannot read '[::1]:999", "hf-bracket-count-too-long"),
    hosts("10.0.0.1 slots=" + "9" * 5000 + "\n", "{hf}:1: slots=9999", "hf-slots-5000-digits"),
    # ------------------------------------------------------------ hostfiles: users, hosts, zone ids
    hosts(
        "-oProxyCommand=x@node1\n",
        "{hf}:1: '-oProxyCommand=x@node1': '-oProxyCommand=x' is not a login",
        "hf-user-dash",
    ),
    hosts("-oProxyCommand=touch\n", "{hf}:1: '-oProxyCommand=touch' is not a hostname", "hf-host-dash"),
    hosts("node1 ssh_user=-oProxyCommand=x\n", "{hf}:1: 'ssh_user=-oProxyCommand=x'", "hf-ssh-user-dash"),
    hosts("u;id@node1\n", "{hf}:1: 'u;id@node1': 'u;id' is not a login name", "hf-user-semicolon"),
    hosts(
        "node1 ssh_user=$(id)\n",
        "{hf}:1: 'ssh_user=$(id)': '$(id)' is not a login name",
        "hf-ssh-user-subshell",
    ),
    hosts("ü@node1\n", "{hf}:1: 'ü@node1': 'ü' is not a login name", "hf-user-unicode"),
    hosts("node1 ssh_user=\n", "{hf}:1: 'ssh_user=': '' is not a login name", "hf-ssh-user-empty"),
    hosts(
        "fe80::1%eth0;rm slots=8\n",
        "{hf}:1: 'fe80::1%eth0;rm' is not an IPv6 address with a zone id",
        "hf-zone-semicolon",
    ),
    hosts("[fe80::1%eth0$x]:8\n", "is not an IPv6 address with a zone id", "hf-zone-bracketed"),
    hosts("node1%eth0\n", "{hf}:1: 'node1%eth0' is not an IPv6 address with a zone id", "hf-zone-on-name"),
    hosts("node\x1b[31m slots=8\n", "{hf}:1: 'node\\x1b[31m' is not a hostname", "hf-escape-in-name"),
    hosts("[bold]node1[/bold] slots=8\n", "{hf}:1: 'bold]node1[/bold' is not a hostname", "hf-rich-markup"),
    hosts("node\u202e1 slots=8\n", "{hf}:1: 'node\\u202e1' is not a hostname", "hf-bidi-override"),
    hosts("10.0.0.1\x0cslots=8\n", "{hf}:1: '10.0.0.1\\x0cslots=8' is not a hostname", "hf-form-feed"),
    hosts("10.0.0.1\xa0slots=8\n", "{hf}:1: '10.0.0.1\xa0slots=8' is not a hostname", "hf-no-break-space"),
    hosts("10.0.0.1\rslots=8\n", "{hf}:1: '10.0.0.1\\x0dslots=8' is not a hostname", "hf-bare-cr"),
    hosts("10.0.0.1\x00 slots=8\n", "{hf}:1: '10.0.0.1\\x00' is not a hostname", "hf-nul-in-line"),
    hosts("a" * 64 + ".example slots=8\n", "{hf}:1: 'aaaa", "hf-label-too-long"),
    hosts(".".join(["a" * 60] * 5) + "\n", "is not a hostname or IP address", "hf-name-too-long"),
    hosts("10.0.0.1 slöts=8\n", "{hf}:1: cannot read 'slöts=8' after the host name", "hf-unicode-key"),
    hosts(
        "10.0.0.1 slots=8\r\n10.0.0.2 slots=8\r\n10.0.0.3\r\n",
        "{hf}:3: '10.0.0.3' has no slot count",
        "hf-crlf",
    ),
    # ------------------------------------------------------------ hostfiles: the file itself
    hosts(
        b"10.0.0.1 slots=8\n\xff\xfe\n",
        "{hf}:2: the hostfile is not UTF-8 text (byte 0xff at offset 17)",
        "hf-not-utf8",
    ),
    hosts(
        b"\xef\xbb\xbf\xef\xbb\xbf10.0.0.1\n", "{hf}:1: '\\ufeff10.0.0.1' is not a hostname", "hf-double-bom"
    ),
    Row("hf-fifo", ("hosts", "--hostfile", "{x}"), "{x}: the hostfile is a named pipe (FIFO)", make="fifo"),
    Row("hf-dev-zero", ("hosts", "--hostfile", "/dev/zero"), "/dev/zero: the hostfile is a character device"),
    Row("hf-directory", ("hosts", "--hostfile", "{x}"), "{x}: the hostfile is a directory", make="dir"),
    Row(
        "hf-symlink-loop",
        ("hosts", "--hostfile", "{x}"),
        "{x}: cannot read the hostfile: too many levels",
        make="loop",
    ),
    Row("hf-too-big", ("hosts", "--hostfile", "{x}"), "{x}: the hostfile is larger than 1 MiB", make="big"),
    Row(
        "hf-path-too-long",
        ("hosts", "--hostfile", "a" * 5000),
        "cannot read the hostfile: the path is too long",
    ),
    Row("hf-path-nul", ("hosts", "--hostfile", "x\0y"), "x\\x00y: a hostfile path cannot contain a NUL byte"),
    Row(
        "hf-path-escape",
        ("hosts", "--hostfile", "h\x1b]0;t\x07"),
        "h\\x1b]0;t\\x07: a hostfile path cannot contain",
    ),
    Row("hf-path-empty", ("hosts", "--hostfile", ""), "'': hostfile not found"),
    Row("hf-default-fifo", ("hosts",), "{x}: the hostfile is a named pipe (FIFO)", make="default-fifo"),
    Row(
        "hf-check-fifo",
        ("check", GSPO, "--hostfile", "{x}"),
        "{x}: the hostfile is a named pipe",
        make="fifo",
    ),
    Row(
        "hf-render-fifo",
        ("render", GSPO, "--hostfile", "{x}"),
        "{x}: the hostfile is a named pipe",
        make="fifo",
    ),
    Row(
        "hf-up-dev-zero",
        ("up", "local-probe", "--hostfile", "/dev/zero"),
        "/dev/zero: the hostfile is a character",
    ),
    Row(
        "hf-launch-user-dash",
        ("launch", "local-probe", "--hostfile", "{hf}"),
        "{hf}:1: '-l@node1': '-l' is not a login name",
        hostfile="-l@node1\n",
    ),
    Row(
        "hf-render-superscript",
        ("render", GSPO, "--hostfile", "{hf}"),
        "{hf}:8: slots=² is not a positive whole number",
        hostfile=EIGHT.replace("10.0.0.8 slots=8", "10.0.0.8 slots=²"),
    ),
    # ------------------------------------------------------------ CLI arguments
    hosts(
        EIGHT,
        "--head -oProxyCommand=x: not a hostname or IP address",
        "arg-head-dash",
        "--head=-oProxyCommand=x",
    ),
    hosts(EIGHT, "--head 10.0.0.1\\x1b[2J: not a hostname", "arg-head-escape", "--head", "10.0.0.1\x1b[2J"),
    hosts(EIGHT, "--head node1;id: not a hostname", "arg-head-semicolon", "--head", "node1;id"),
    Row(
        "arg-run-id-newline",
        ("render", "local-probe", "--nodes", "1", "--run-id", "x\n"),
        "--run-id 'x\\n': a run id",
    ),
    Row(
        "arg-run-id-escape",
        ("render", "local-probe", "--nodes", "1", "--run-id", "x\x1b[2J"),
        "--run-id 'x\\x1b[2J'",
    ),
    Row(
        "arg-run-id-dotdot",
        ("render", "local-probe", "--nodes", "1", "--run-id", "../x"),
        "--run-id '../x': a run id",
    ),
    Row("arg-run-id-long", ("render", "local-probe", "--nodes", "1", "--run-id", "a" * 65), "--run-id 'aaaa"),
    Row(
        "arg-format-escape",
        ("render", "local-probe", "--nodes", "1", "--format", "\x1b[31m"),
        "--format \\x1b[31m: unknown",
    ),
    Row("arg-nodes-zero", ("render", "local-probe", "--nodes", "0"), "--nodes 0: need at least 1 node"),
    Row(
        "arg-gpus-negative",
        ("render", "local-probe", "--nodes", "1", "--gpus-per-node", "-1"),
        "--gpus-per-node -1",
    ),
    Row(
        "arg-local-head",
        ("check", "local-probe", "--local", "--head", "node1"),
        "--head has no meaning with --local",
    ),
    Row(
        "arg-recipe-nul",
        ("check", "local\0probe", "--nodes", "1"),
        "local\\x00probe: a recipe name or path cannot",
    ),
    Row(
        "arg-recipe-newline",
        ("check", "local-probe\n", "--nodes", "1"),
        "local-probe\\x0a: a recipe name or path",
    ),
    Row("arg-recipe-too-long", ("check", "a" * 5000 + ".toml", "--nodes", "1"), "recipe 'aaaa"),
    Row(
        "arg-recipe-dev-zero",
        ("check", "/dev/zero", "--nodes", "1"),
        "/dev/zero: the recipe is a character device",
    ),
    # ------------------------------------------------------------ the environment: Slurm
    slurm({"SLURM_JOB_NUM_NODES": "²"}, "SLURM_JOB_NUM_NODES=²: not a node count", "env-num-nodes-sup"),
    slurm({"SLURM_JOB_NUM_NODES": "٢"}, "SLURM_JOB_NUM_NODES=٢: not a node count", "env-num-nodes-arabic"),
    slurm({"SLURM_NNODES": "two"}, "SLURM_NNODES=two: not a node count", "env-nnodes-text"),
    slurm({"SLURM_GPUS_ON_NODE": "²"}, "SLURM_GPUS_ON_NODE=²: not a GPU count", "env-gpus-on-node-sup"),
    slurm({"SLURM_GPUS_ON_NODE": "٨"}, "SLURM_GPUS_ON_NODE=٨: not a GPU count", "env-gpus-on-node-arabic"),
    slurm(
        {"SLURM_GPUS_PER_NODE": "gpu:h100:٨"},
        "SLURM_GPUS_PER_NODE=gpu:h100:٨: not a GPU count",
        "env-gres-ar",
    ),
    slurm(
        {"SLURM_GPUS_PER_NODE": "h100:8;x"},
        "SLURM_GPUS_PER_NODE=h100:8;x: not a GPU count",
        "env-gres-semicolon",
    ),
    slurm({"SLURM_JOB_GPUS": "0,1,٢"}, "SLURM_JOB_GPUS=0,1,٢: '٢' is not a GPU id", "env-job-gpus-arabic"),
    slurm(
        {"SLURM_STEP_GPUS": "0,\x1b[2J"},
        "SLURM_STEP_GPUS=0,\\x1b[2J: '\\x1b[2J' is not a GPU id",
        "env-step-gpus-esc",
    ),
    slurm({"SLURM_JOB_ID": "1;rm -rf /"}, "SLURM_JOB_ID=1;rm -rf /: not a Slurm job id", "env-job-id"),
    slurm(
        {"SLURM_JOB_NODELIST": "node01;id,node02"},
        "SLURM_JOB_NODELIST=node01;id,node02: node 'node01;id'",
        "env-nodelist-semicolon",
    ),
    slurm(
        {"SLURM_JOB_NODELIST": "-oProxyCommand=x"},
        "SLURM_JOB_NODELIST=-oProxyCommand=x: node '-oProxyCommand=x'",
        "env-nodelist-dash",
    ),
    slurm(
        {"SLURM_JOB_NODELIST": "node٣"},
        "SLURM_JOB_NODELIST=node٣: node 'node٣' is not a hostname",
        "env-nodelist-unicode",
    ),
    slurm(
        {"SLURM_JOB_NODELIST": "node\x1b[2J"},
        "SLURM_JOB_NODELIST=node\\x1b[2J: cannot expand",
        "env-nodelist-escape",
    ),
    slurm(
        {"SLURM_JOB_NODELIST": "node[1-²]"},
        "SLURM_JOB_NODELIST=node[1-²]: cannot expand (bad range)",
        "env-nodelist-range",
    ),
    slurm(
        {"SLURM_JOB_NODELIST": "node[1-9999999]"},
        "SLURM_JOB_NODELIST=node[1-9999999]: cannot expand",
        "env-nodelist-huge",
    ),
    slurm({"SLURM_JOB_NODELIST": ","}, "SLURM_JOB_NODELIST=,: names no nodes", "env-nodelist-empty"),
    slurm(
        {"SLURM_JOB_NODELIST": "bad!node"},
        "SLURM_JOB_NODELIST=bad!node: node 'bad!node'",
        "env-nodelist-bang",
    ),
    slurm(
        {**HET, "SLURM_HET_SIZE": "2"},
        "SLURM_HET_SIZE=2: this is a heterogeneous Slurm job (component 0: cpu[9-10], component 1: node[01-02])",
        "env-het-size",
    ),
    slurm(HET, "SLURM_JOB_NODELIST_HET_GROUP_0: this is a heterogeneous Slurm job", "env-het-groups"),
    slurm(
        {**HET, "SLURM_HET_SIZE": "2"},
        "SLURM_HET_SIZE=2: this is a heterogeneous",
        "env-het-check",
        cmd="check",
    ),
    slurm(
        {"SLURM_GPUS_ON_NODE": "٨"}, "SLURM_GPUS_ON_NODE=٨: not a GPU count", "env-gpus-render", cmd="render"
    ),
    # ------------------------------------------------------------ recipe files
    recipe(
        BILLION_LAUGHS,
        "{recipe}: not valid YAML at line 1: anchors and aliases",
        "yaml-billion-laughs",
        ".yaml",
    ),
    recipe(
        YAML_OK + "rollout: &r {task: gsm8k}\neval: *r\n",
        "{recipe}: not valid YAML at line 6: anchors",
        "yaml-anchor",
        ".yml",
    ),
    recipe(
        "base: &b {name: x, base_dir: /x}\nrun:\n  <<: *b\ncluster: {}\n",
        "{recipe}: not valid YAML at line 1: anchors",
        "yaml-merge-key",
        ".yaml",
    ),
    recipe(
        YAML_OK + "parallelism: {tp: " + "9" * 5000 + "}\n",
        "{recipe}: cannot read a value: a number has more",
        "yaml-5000-digits",
        ".yaml",
    ),
    recipe(
        YAML_OK + "run_date: 2001-13-45\n",
        "{recipe}: cannot read a value: month must be in 1..12",
        "yaml-bad-date",
        ".yaml",
    ),
    recipe("[" * 3000 + "\n", "{recipe}: the recipe is nested too deeply", "yaml-deep", ".yaml"),
    recipe(
        "a: 1\n---\nb: 2\n",
        "{recipe}: not valid YAML at line 2: but found another document",
        "yaml-two-docs",
        ".yaml",
    ),
    recipe(
        RECIPE_OK + "[parallelism]\ntp = " + "9" * 5000 + "\n",
        "{recipe}: cannot read a value: a number",
        "toml-5000-digits",
    ),
    recipe("a = " + "[" * 5000 + "\n", "{recipe}: the recipe is nested too deeply", "toml-deep"),
    recipe(
        RECIPE_OK + '[checkpoint]\nsave = "{base_dir.__class__}"\n',
        "checkpoint.save: cannot expand '{base_dir.__class__}': unknown placeholder 'base_dir.__class__'",
        "toml-placeholder-attr",
    ),
    recipe(
        RECIPE_OK + '[rollout]\nprompt_data = "{base_dir[0]}"\n',
        "rollout.prompt_data: cannot expand '{base_dir[0]}': unknown placeholder 'base_dir[0]'",
        "toml-placeholder-index",
    ),
    recipe(
        RECIPE_OK + '[trainer]\nprobe_paths = ["/a", "{run_name!r}"]\n',
        "trainer.probe_paths[1]: cannot expand '{run_name!r}'",
        "toml-placeholder-conv",
    ),
    recipe(
        RECIPE_OK + '[eval]\nprompt_data = "/x/{"\n',
        "eval.prompt_data: cannot expand '/x/{': Single '{'",
        "toml-placeholder-brace",
    ),
    recipe(
        RECIPE_OK.replace("nodes = 1", 'nodes = 1\nsetup = ["source /env # venv"]'),
        "cluster.setup[0]: 'source /env # venv' has a '#' outside quotes",
        "toml-setup-hash",
    ),
    recipe(
        RECIPE_OK.replace("nodes = 1", 'nodes = 1\nsetup = ["true", "echo \\"unclosed"]'),
        "cluster.setup[1]: 'echo \"unclosed' has an unclosed \" quote",
        "toml-setup-quote",
    ),
    recipe(
        RECIPE_OK.replace("nodes = 1", 'nodes = 1\nsetup = ["a\\nb"]'),
        "cluster.setup[0]: holds a control character (\\x0a)",
        "toml-setup-newline",
    ),
    recipe(
        RECIPE_OK.replace('"/x"', '"/x\\u001b]0;pwned\\u0007"'),
        "run.base_dir: holds a control character (\\x1b)",
        "toml-escape-base-dir",
    ),
    recipe(
        RECIPE_OK + '[env.vars]\n"A\\u001b" = "1"\n',
        "env.vars: holds a control character (\\x1b)",
        "toml-escape-env-key",
    ),
    recipe(
        RECIPE_OK + '[algorithm]\neps_clip = "١e-4"\n',
        "algorithm.eps_clip: Value error, '١e-4' is not a number",
        "toml-number-arabic",
    ),
    recipe(
        RECIPE_OK + '[parallelism]\ntp = "٣"\n',
        "parallelism.tp: Input should be a valid integer (got '٣')",
        "toml-int-text-arabic",
    ),
    recipe(
        RECIPE_OK + "".join(f"k{i} = 1\n" for i in range(60)),
        "cluster.k19: unknown key - ... and 40 more",
        "toml-many-unknown-keys",
    ),
    recipe(
        '[run]\nname = "x"\n' + "#" * (2 << 20), "{recipe}: the recipe is larger than 1 MiB", "toml-too-big"
    ),
    Row(
        "recipe-not-utf8",
        ("check", "{recipe}", "--nodes", "1"),
        "{recipe}:2: the recipe is not UTF-8",
        recipe="[run]\nname = '\udcff'\n",
    ),
    Row(
        "recipe-fifo",
        ("check", "{x}", "--nodes", "1"),
        "{x}: the recipe is a named pipe (FIFO)",
        make="fifo",
        suffix=".toml",
    ),
    Row(
        "recipe-dir",
        ("check", "{x}", "--nodes", "1"),
        "{x}: the recipe is a directory",
        make="dir",
        suffix=".yaml",
    ),
    Row(
        "recipe-loop",
        ("render", "{x}", "--nodes", "1"),
        "{x}: cannot read the recipe: too many levels",
        make="loop",
        suffix=".toml",
    ),
    # ------------------------------------------------------------ --set overrides
    override(
        "parallelism.tp=²", "parallelism.tp: Input should be a valid integer (got '²')", "set-int-superscript"
    ),
    override(
        "parallelism.tp=٣", "parallelism.tp: Input should be a valid integer (got '٣')", "set-int-arabic"
    ),
    override(
        "parallelism.tp='٣'",
        "parallelism.tp: Input should be a valid integer (got '٣')",
        "set-int-quoted-arabic",
    ),
    override(
        "parallelism.tp=８", "parallelism.tp: Input should be a valid integer (got '８')", "set-int-fullwidth"
    ),
    override(
        "cluster.gpus_per_node=٨", "cluster.gpus_per_node: Input should be a valid integer", "set-gpus-arabic"
    ),
    override(
        "parallelism.tp=" + "9" * 5000,
        "parallelism.tp: Input should be a valid integer (got '9999",
        "set-int-5000",
    ),
    override(
        "parallelism.tp=" + "[" * 3000,
        "parallelism.tp: Input should be a valid integer (got '[[[[",
        "set-deep",
    ),
    override(
        "algorithm.eps_clip=١e-4", "algorithm.eps_clip: Value error, '١e-4' is not a number", "set-num-arabic"
    ),
    override(
        "algorithm.eps_clip='inf'", "algorithm.eps_clip: Value error, 'inf' is not a number", "set-num-inf"
    ),
    override(
        "run.name=x\ny", "--set run.name=x\\x0ay: holds a control character or a line break", "set-newline"
    ),
    override(
        "trainer.extra_args=['\x1b[2J']",
        "--set trainer.extra_args=['\\x1b[2J']: holds a control",
        "set-escape",
    ),
    override("run.na\x1bme=x", "--set run.na\\x1bme=x: holds a control character", "set-escape-key"),
    override(
        "checkpoint.save={base_dir.x}",
        "checkpoint.save: cannot expand '{base_dir.x}': unknown placeholder 'base_dir.x'",
        "set-placeholder-attr",
    ),
    override(
        "checkpoint.load={base_dir[0]}",
        "checkpoint.load: cannot expand '{base_dir[0]}'",
        "set-placeholder-index",
    ),
    override(
        "checkpoint.ref_load={run_name:>9}",
        "checkpoint.ref_load: cannot expand '{run_name:>9}'",
        "set-placeholder-spec",
    ),
    override(
        "cluster.setup=['source /x # y']",
        "cluster.setup[0]: 'source /x # y' has a '#' outside quotes",
        "set-setup-hash",
    ),
    override(
        "cluster.setup=['true', 'sleep 9 &']", "cluster.setup[1]: 'sleep 9 &' ends with '&'", "set-setup-amp"
    ),
    override(
        "cluster.setup=['x \\']", "cluster.setup[0]: 'x \\\\' ends with a backslash", "set-setup-backslash"
    ),
    override("cluster.setup=['']", "cluster.setup[0]: '' is empty", "set-setup-empty", cmd="render"),
    override(
        "parallelism.tp=٣",
        "parallelism.tp: Input should be a valid integer",
        "set-int-arabic-launch",
        cmd="launch",
    ),
    # ------------------------------------------------------------ the checks (exit 1): odd but well-formed values
    Row(
        "checks-loopback",
        ("launch", GSPO, "--dry-run", "--no-deep-check", "--hostfile", "{hf}"),
        "127.0.0.1 is a loopback address in a 8-node cluster",
        hostfile="127.0.0.1 slots=8\n" + "".join(f"10.0.0.{i} slots=8\n" for i in range(2, 9)),
        code=1,
    ),
    Row(
        "checks-relative-base-dir",
        (
            "launch",
            GSPO,
            "--dry-run",
            "--no-deep-check",
            "--hostfile",
            "{hf}",
            "--set",
            "run.base_dir=data/x",
        ),
        "run.base_dir: base_dir 'data/x' must be an absolute directory",
        hostfile=EIGHT,
        code=1,
    ),
    Row(
        "checks-unexpanded-env",
        (
            "launch",
            GSPO,
            "--dry-run",
            "--no-deep-check",
            "--hostfile",
            "{hf}",
            "--set",
            "env.vars.FOO=${BAR}",
        ),
        "env.vars.FOO: '${BAR}' holds an unexpanded variable",
        hostfile=EIGHT,
        code=1,
    ),
    Row(
        "checks-glued-flag",
        (
            "launch",
            GSPO,
            "--dry-run",
            "--no-deep-check",
            "--hostfile",
            "{hf}",
            "--set",
            'trainer.extra_args=["--lr 1"]',
        ),
        "holds a flag and its value in one token",
        hostfile=EIGHT,
        code=1,
    ),
    *[
        Row(
            f"option-{opt.lstrip('-')}-{kind}",
            ("launch", "local-probe", "--dry-run", "--hostfile", "{hf}", opt, value),
            f"{opt} '",
            hostfile="10.0.0.1 slots=1\n",
        )
        for opt in (
            "--python",
            "--ssh-key",
            "--ssh-config",
            "--known-hosts",
            "--network",
            "--interface",
            "--head",
        )
        for kind, value in (("newline", "/x\ny"), ("escape", "/x\x1b[31mred"))
    ],
    *[
        Row(
            f"option-{rid}",
            ("launch", "local-probe", "--dry-run", "--hostfile", "{hf}", *args),
            needle,
            hostfile="10.0.0.1 slots=1\n",
        )
        for rid, args, needle in (
            (
                "ssh-user-dash",
                ("--ssh-user", "-oProxyCommand=x"),
                "--ssh-user '-oProxyCommand=x': not a login name",
            ),
            ("ssh-user-shell", ("--ssh-user", "a;b"), "--ssh-user 'a;b': not a login name"),
            (
                "interface-slash",
                ("--interface", "eth0/1"),
                "--interface 'eth0/1': not a network interface name",
            ),
            ("interface-long", ("--interface", "e" * 16), "not a network interface name"),
            ("ssh-port-zero", ("--ssh-port", "0"), "--ssh-port 0: not a TCP port"),
            ("python-empty", ("--python", ""), "--python '': empty"),
            (
                "ssh-key-missing",
                ("--ssh-key", "/nonexistent/key"),
                "--ssh-key /nonexistent/key: no such file",
            ),
            (
                "known-hosts-missing",
                ("--known-hosts", "/nonexistent/kh"),
                "--known-hosts /nonexistent/kh: no such",
            ),
            ("connect-timeout-zero", ("--connect-timeout", "0"), "--connect-timeout 0"),
            ("restart-on-word", ("--restart-on", "never"), "--restart-on never: not cluster or any"),
            ("hang-timeout-inf", ("--hang-timeout", "inf"), "--hang-timeout inf"),
            ("join-timeout-negative", ("--join-timeout", "-1"), "--join-timeout -1"),
            ("spares-missing", ("--spares", "/nonexistent/spares"), "--spares: /nonexistent/spares"),
        )
    ],
]


def _make(kind: str, path: Path, monkeypatch) -> None:
    if kind in ("fifo", "default-fifo"):
        os.mkfifo(path)
        if kind == "default-fifo":
            monkeypatch.setattr(hosts_mod, "DEFAULT_HOSTFILE", str(path))
    elif kind == "loop":
        os.symlink(path.with_name("loop-b"), path)
        os.symlink(path, path.with_name("loop-b"))
    elif kind == "dir":
        path.mkdir()
    elif kind == "big":
        path.write_text("10.0.0.1 slots=8\n" + "#" * (2 << 20) + "\n")


def _sub(text: str, paths: dict[str, str]) -> str:
    for k, v in paths.items():
        text = text.replace("{" + k + "}", v)
    return text


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """Nothing outside tmp_path: no run directory, no state dir, no default hostfile, no Slurm
    variables of the caller, no scontrol or nvidia-smi."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GLMLAUNCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("GLMLAUNCH_RUNS_DIR", str(tmp_path / "runs"))
    for k in list(os.environ):
        if k.startswith("SLURM_"):
            monkeypatch.delenv(k)
    monkeypatch.setattr(hosts_mod, "DEFAULT_HOSTFILE", str(tmp_path / "no-default-hostfile"))
    real_which = shutil.which
    monkeypatch.setattr(
        shutil,
        "which",
        lambda cmd, *a, **k: None if cmd in ("scontrol", "nvidia-smi") else real_which(cmd, *a, **k),
    )
    yield tmp_path
    assert not (tmp_path / "runs").exists(), "bad input created a run directory"


def test_table():
    assert len(ROWS) >= 80
    assert len({r.id for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_hostile_input(row: Row, sandbox, cli, monkeypatch):
    paths = {}
    if row.hostfile is not None:
        hf = sandbox / "hostfile"
        hf.write_bytes(row.hostfile if isinstance(row.hostfile, bytes) else row.hostfile.encode())
        paths["hf"] = str(hf)
    if row.recipe is not None:
        rp = sandbox / f"recipe{row.suffix}"
        rp.write_bytes(row.recipe.encode("utf-8", "surrogateescape"))
        paths["recipe"] = str(rp)
    if row.make:
        x = sandbox / f"special{row.suffix if row.make != 'big' else ''}"
        _make(row.make, x, monkeypatch)
        paths["x"] = str(x)
    res = cli(*(_sub(a, paths) for a in row.args), env=row.env)
    out = res.output
    assert res.exit_code == row.code, out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in out, out
    assert out.count("error:") == 1, out
    assert re.search(r"^fix: ", out, re.M), out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out, repr(out)
    message = out[out.index("error:") : out.index("fix:")] if row.code == 2 else out
    assert _sub(row.needle, paths) in " ".join(message.split()) or _sub(row.needle, paths) in message, out


def test_crlf_hostfile_is_read(sandbox, cli):
    hf = sandbox / "hostfile"
    hf.write_bytes(b"10.0.0.1 slots=8\r\n# rack B\r\n10.0.0.2 slots=8\r\n")
    res = cli("hosts", "--hostfile", hf)
    assert res.exit_code == 0, res.output
    assert "10.0.0.2" in res.output and f"{hf}:3" in res.output


@pytest.mark.parametrize(
    "text", ["[bold red]x[/]", "a\x1b[2Jb", "\x1b]0;title\x07", "r\rl", "\u202eevil", "[link=x]y"]
)
def test_esc_prints_the_text_itself(text):
    from rich.console import Console

    from glmlaunch.cli import _esc
    from glmlaunch.errors import safe_text

    c = Console(record=True, width=200, force_terminal=True)
    c.print(_esc(text))
    shown = c.export_text()
    assert shown.rstrip("\n") == safe_text(text) and "\x1b" not in shown and "\x07" not in shown


def test_findings_table_escapes_title_and_fields(monkeypatch):
    from rich.console import Console

    from glmlaunch import cli as cli_mod
    from glmlaunch.errors import Finding

    console = Console(record=True, width=200, force_terminal=True)
    monkeypatch.setattr(cli_mod, "out", console)
    cli_mod.print_findings(
        [Finding("env.vars.[b]X\x1b", "bad [i]value\x1b[2J", source="[u]src")], "run [red]t\x07"
    )
    text = console.export_text()
    for s in ("run [red]t\\x07", "env.vars.[b]X\\x1b", "bad [i]value\\x1b[2J", "[u]src"):
        assert s in text, text
