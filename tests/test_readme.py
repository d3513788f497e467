"""The README runs top to bottom: every command of its shell blocks, in order, at tiny sizes.

How the README's ``sh``/``bash`` blocks are read: a line ending in ``\\`` continues on the next,
comment lines and trailing comments are dropped, and a trailing ``# needs: REASON`` marks a
command that cannot run on a CPU machine with only Fashion-MNIST (REASON is one of
:data:`REASONS`, comma-separated). Marked commands are skipped, one by one; every other
command runs, in the README's order, in one temporary folder that stands for a fresh clone
after ``make setup``: its ``configs/`` holds tiny copies of the repository's YAML files.

What is rewritten to keep it tiny (the same rules for every line, none per line):

- ``robustact CMD`` flags, where CMD has the flag (:data:`ADD`: set, or added when absent;
  :data:`REPLACE`: set only where the README gives it): 1 epoch, 1100 training images (the
  overfitting guard wants more than twice its 512), 32 test images, 8 attacked points and
  probes, 5 lr-find steps; RL: 600 frames, 1 short episode.
- An attack spec's ``queries=N``, ``restarts=N``, ``steps=N`` become 50, 1 and 10.
- A study given by name (``robustact run kaf/fashion_mnist``) becomes the path of its tiny
  copy, ``configs/kaf/fashion_mnist.yaml``.
- Each YAML file under ``configs/`` (:func:`tiny_yaml`): the same sizes as the flags, a
  study's ``grid`` cut to the first value of each key, its ``cells`` to those the README names
  with ``--cell`` (the first when it names none), its overfitting guard to 32 images, and
  ``suite: none`` where it lists attacks of its own (a suite's budgets, such as Square's 5000
  queries, have no knob; the README's ``attack`` lines run the default suite).
- ``torchrun --nproc-per-node N`` runs 2 processes (``python -m torch.distributed.run``).

``python ARGS`` lines run with this interpreter. A code block (any language) whose first
line is ``# file: PATH`` is written to PATH, in its place in the order (a model module for
``--model-factory``, say). Other lines are checked, not run (:func:`check_other`): ``make X``
names a Makefile target, ``. .venv/bin/activate`` and ``.venv/bin/pytest`` name the
environment ``make`` builds; anything else fails the test until it is handled here or marked.

``robustact`` runs as ``python -m robustact``, each command in its own process forked from one
that has imported the package already (a fresh interpreter per command pays 3 s of imports,
30 commands over); ``ROBUSTACT_README_SUBPROCESS=1`` starts a fresh ``python -m robustact``
for each instead. ``pytest -s`` shows what ran and what was skipped, and why.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

#: what a ``# needs:`` mark may name: what this CPU machine with Fashion-MNIST does not have
REASONS = {"cifar10", "svhn", "mnist", "gpu", "weights", "slurm", "network"}
MARK = re.compile(r"#\s*needs:\s*([\w, -]+)\s*$")
FILE = re.compile(r"#\s*file:\s*(\S+)$")
SHELLS = ("sh", "bash", "shell", "console")

#: flag -> tiny value, set where the README gives it and added where the command has the flag
ADD = {"--epochs": "1", "--train-subset": "1100", "--test-subset": "32", "--n": "8",
       "--probe-size": "8", "--steps": "5", "--frames": "600", "--replay-start": "100",
       "--max-episode-frames": "100", "--episodes": "1", "--max-frames": "50",
       "--no-progress": None}
#: flag -> tiny value, set only where the README gives it (adding it would change the method)
REPLACE = {"--samples": "2", "--mc-samples": "2", "--nproc-per-node": "2",
           "--nproc_per_node": "2"}
#: YAML key -> tiny value, wherever it appears; train configs and study ``train:`` blocks
#: also get the subsets; an ``evaluate:`` block gets ``n`` and ``probe_size``
YAML_SET = {"epochs": 1, "train_subset": 1100, "test_subset": 32, "frames": 600,
            "replay_start": 100, "max_episode_frames": 100, "episodes": 1, "samples": 2,
            "mc_samples": 2, "max_frames": 50}
#: attack-spec option -> tiny value (``--attack pgd:steps=40``, a study's ``attacks:``)
SPEC_SET = {"queries": 50, "restarts": 1, "steps": 10}
SPEC_OPTION = re.compile(r"\b(queries|restarts|steps)=\d+")
STUDY_COMMANDS = {("run",), ("results", "list"), ("results", "export"), ("results", "show"),
                  ("report",), ("rl", "run"), ("rl", "table")}


@dataclass
class Command:
    """One logical line of a README shell block, or a file block to write."""

    line: int               # README line where it starts
    text: str               # as written, continuation lines joined, trailing comment kept
    argv: list[str]         # shell words, comments dropped; ["write-file", PATH] for a file
    needs: list[str] = field(default_factory=list)
    content: str = ""       # a file block's text
    outcome: str = ""       # "ran", "checked", "written", "skipped (needs: ...)", "FAILED ..."
    seconds: float = 0.0


def shell_commands(text: str) -> list[Command]:
    """The commands of the ``sh``/``bash`` blocks of ``text``, in order; a block of any
    language whose first line is ``# file: PATH`` is a file to write there, in its place."""
    commands: list[Command] = []
    lang, first, pending, start, content = None, False, "", 0, None
    for number, line in enumerate(text.splitlines(), 1):
        fence = line.strip()
        if fence.startswith("```"):
            if lang is not None and content is not None:
                commands[-1].content = "\n".join(content) + "\n"
            lang, first, content = (fence[3:].strip(), True, None) if lang is None else \
                (None, False, None)
            continue
        wanted, first = FILE.match(fence) if first else None, False
        if wanted:
            commands.append(Command(number, fence, ["write-file", wanted.group(1)]))
            content = []
        elif content is not None:
            content.append(line)
        elif lang not in SHELLS or (not pending and (not fence or fence.startswith("#"))):
            continue
        else:
            start = start if pending else number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            commands.append(_command(start, (pending + line).strip()))
            pending = ""
    return commands


def _command(line: int, joined: str) -> Command:
    mark = MARK.search(joined)
    needs = [r.strip() for r in mark.group(1).split(",")] if mark else []
    return Command(line, joined, shlex.split(joined, comments=True), needs)


def subparser(parser: argparse.ArgumentParser, words: list[str]
              ) -> tuple[argparse.ArgumentParser, int]:
    """The (sub)parser that parses ``words`` and how many leading words name it."""
    depth = 0
    while depth < len(words):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or words[depth] not in subs[0].choices:
            break
        parser, depth = subs[0].choices[words[depth]], depth + 1
    return parser, depth


def tiny_args(words: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """``robustact`` arguments ``words`` at tiny sizes (the rules of this module's docstring)."""
    sub, depth = subparser(parser, words)
    options = sub._option_string_actions
    out, given, skip = list(words[:depth]), set(), False
    for word in words[depth:]:
        if skip:
            skip = False
            continue
        flag = word.split("=", 1)[0]
        action = options.get(flag)
        rule = _rule(action)
        if rule is not None:
            given.add(action.dest)
            out += [flag] if action.nargs == 0 else [flag, rule[1]]
            skip = action.nargs != 0 and "=" not in word
            continue
        out.append(tiny_spec(word))
    for name, value in ADD.items():
        action = options.get(name)
        if action is not None and action.dest not in given:
            out += [name] if value is None else [name, value]
    return _study_path(out, words[:depth])


def tiny_spec(word: str) -> str:
    """``word`` with the sizes of an attack spec made tiny: ``square:queries=1000`` ->
    ``square:queries=50`` (:data:`SPEC_SET`)."""
    return SPEC_OPTION.sub(lambda m: f"{m.group(1)}={SPEC_SET[m.group(1)]}", word)


def _rule(action: Any) -> tuple[str, str | None] | None:
    for name in (action.option_strings if action is not None else ()):
        for table in (ADD, REPLACE):
            if name in table:
                return name, table[name]
    return None


def _study_path(args: list[str], command: list[str]) -> list[str]:
    """A study given by name becomes its tiny copy's path, ``configs/NAME.yaml``."""
    if tuple(command) not in STUDY_COMMANDS or len(args) <= len(command):
        return args
    study = args[len(command)]
    if not study.endswith(".yaml") and (REPO / "configs" / f"{study}.yaml").is_file():
        args[len(command)] = f"configs/{study}.yaml"
    return args


def tiny_yaml(data: Any, cells: set[str], key: str = "") -> Any:
    """A config (train config, study, RL study) at tiny sizes: :data:`YAML_SET` wherever its
    keys appear, a ``grid`` cut to its first values, a study's ``cells`` to those in ``cells``
    (the first one when none is)."""
    if isinstance(data, list):
        return [tiny_yaml(item, cells, key) for item in data]
    if not isinstance(data, dict):
        return data
    out = {k: YAML_SET[k] if k in YAML_SET else tiny_yaml(v, cells, k) for k, v in data.items()}
    if key == "grid":
        out = {k: v[:1] if isinstance(v, list) else v for k, v in out.items()}
    if isinstance(out.get("cells"), list) and out["cells"]:
        out["cells"] = [c for c in out["cells"] if c.get("id") in cells] or out["cells"][:1]
    if key == "evaluate":
        if "episodes" not in out:  # an image study's evaluation (an RL one plays episodes)
            out.update(n=8, probe_size=8)
        if out.get("attacks") and "suite" not in out:  # no knob makes a suite's budgets
            out["suite"] = "none"                      # tiny; the attack lines run one
        if "attacks" in out:
            out["attacks"] = [tiny_spec(a) if isinstance(a, str) else a for a in out["attacks"]]
    if key == "adversarial" and "method" in out:
        out["guard_size"] = 32  # a study's guard (a flag cannot set it: the CLI gets 1100 images)
    if key == "train" and "model" in out or ("model" in out and "dataset" in out):
        out.update(train_subset=1100, test_subset=32)
    return out


def tiny_clone(root: Path, commands: list[Command]) -> None:
    """``root`` as a fresh clone: tiny copies of ``configs/`` (keeping the cells that
    ``commands`` name with ``--cell``), the repository's ``docs/``."""
    named = {c.argv[i + 1] for c in commands for i, word in enumerate(c.argv[:-1])
             if word == "--cell"}
    for src in (REPO / "configs").rglob("*.yaml"):
        dst = root / "configs" / src.relative_to(REPO / "configs")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(yaml.safe_dump(tiny_yaml(yaml.safe_load(src.read_text()), named)))
    (root / "docs").symlink_to(REPO / "docs")


def check_other(argv: list[str]) -> str:
    """A line that is not a ``robustact`` command: checked against the repository ("" when
    fine), not run. Anything else is an error: run it from this test or mark it."""
    makefile = (REPO / "Makefile").read_text()
    if argv[0] == "make" and len(argv) == 2:
        ok = re.search(rf"^{re.escape(argv[1])}:", makefile, re.M)
        return "" if ok else f"no Makefile target {argv[1]}"
    if argv == [".", ".venv/bin/activate"] or argv[0] == ".venv/bin/pytest":
        return "" if "VENV   := .venv" in makefile and "-e \".[dev]\"" in makefile else \
            "the Makefile does not build .venv with the dev extras"
    return f"{argv[0]}: not a command this test knows; run it here or mark it '# needs: ...'"


class Runner:
    """Runs ``robustact ARGS`` in ``cwd``: forked from a process that imported the package
    (or a fresh ``python -m robustact`` with ROBUSTACT_README_SUBPROCESS=1)."""

    SERVER = (
        "import json, os, runpy, signal, sys, traceback\n"
        "import torch._dynamo  # what torch.optim imports on first use\n"
        "import robustact.cli, robustact.study, robustact.train, robustact.eval, robustact.rl\n"
        "for line in sys.stdin:\n"
        "    job = json.loads(line)\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        signal.alarm(300)  # a command that hangs dies (SIGALRM), and fails the test\n"
        "        os.chdir(job['cwd'])\n"
        "        fd = os.open(job['log'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)\n"
        "        os.dup2(fd, 1); os.dup2(fd, 2)\n"
        "        sys.argv = ['robustact', *job['argv']]\n"
        "        code = 1\n"
        "        try:\n"
        "            runpy.run_module('robustact', run_name='__main__', alter_sys=True)\n"
        "        except SystemExit as exc:\n"
        "            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)\n"
        "        except BaseException:\n"
        "            traceback.print_exc()\n"
        "        sys.stdout.flush(); sys.stderr.flush()\n"
        "        os._exit(code)\n"
        "    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)\n")

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd, self.env, self.server = cwd, env, None
        if os.environ.get("ROBUSTACT_README_SUBPROCESS") != "1":
            self.server = subprocess.Popen([sys.executable, "-c", self.SERVER], cwd=cwd, env=env,
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           text=True)

    def robustact(self, args: list[str]) -> tuple[int, str]:
        log = self.cwd / "last_command.log"
        if self.server is None:
            return self.process([sys.executable, "-m", "robustact", *args])
        assert self.server.stdin is not None and self.server.stdout is not None
        job = {"cwd": str(self.cwd), "log": str(log), "argv": args}
        self.server.stdin.write(json.dumps(job) + "\n")
        self.server.stdin.flush()
        answer = self.server.stdout.readline()
        assert answer, "the process that forks the robustact commands died"
        return int(answer), log.read_text()

    def process(self, argv: list[str]) -> tuple[int, str]:
        done = subprocess.run(argv, cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=300)
        return done.returncode, done.stdout + done.stderr

    def close(self) -> None:
        if self.server is not None:
            assert self.server.stdin is not None
            self.server.stdin.close()
            self.server.wait(timeout=60)


def run_command(cmd: Command, runner: Runner, parser: argparse.ArgumentParser) -> None:
    """Run (or check, or skip) one README command; its outcome is set on ``cmd``."""
    argv, started = cmd.argv, time.perf_counter()
    if cmd.needs:
        cmd.outcome = f"skipped (needs: {', '.join(cmd.needs)})"
        return
    if argv[0] == "write-file":
        path = runner.cwd / argv[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(cmd.content)
        rc, output, cmd.outcome = 0, "", "written"
    elif argv[0] == "robustact":
        rc, output = runner.robustact(tiny_args(argv[1:], parser))
    elif argv[0] in ("python", "python3"):
        rc, output = runner.process([sys.executable, *argv[1:]])
    elif argv[0] == "torchrun" and "-m" in argv and argv[argv.index("-m") + 1] == "robustact":
        at = argv.index("-m") + 2
        launcher = tiny_args(["torchrun-options", *argv[1:at - 2]], _torchrun_parser())[1:]
        rc, output = runner.process([sys.executable, "-m", "torch.distributed.run", *launcher,
                                     "-m", "robustact", *tiny_args(argv[at:], parser)])
    else:
        problem = check_other(argv)
        rc, output = (1, problem) if problem else (0, "")
        cmd.outcome = "checked" if not problem else ""
    cmd.seconds = time.perf_counter() - started
    if rc != 0:
        tail = "\n".join(output.strip().splitlines()[-6:])
        cmd.outcome = f"FAILED (exit {rc}): {tail}"
    elif not cmd.outcome:
        cmd.outcome = "ran"


def _torchrun_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers().add_parser("torchrun-options")
    sub.add_argument("--nproc-per-node", "--nproc_per_node")
    return parser


def table(commands: list[Command]) -> str:
    """One row per README command: its line, how it ended, its seconds, the command."""
    rows = [f"{'line':>4}  {'outcome':<26}{'s':>6}  command"]
    for c in commands:
        outcome = c.outcome.splitlines()[0][:60] if c.outcome else "not reached"
        rows.append(f"{c.line:>4}  {outcome:<26}{c.seconds:6.1f}  {' '.join(c.argv)[:110]}")
    return "\n".join(rows)


def test_readme_commands_run_in_order(tmp_path: Path) -> None:
    from robustact.cli import build_parser

    commands = shell_commands(README.read_text())
    tiny_clone(tmp_path, commands)
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
           "ROBUSTACT_WEIGHTS": str(tmp_path / "weights")}
    runner, parser, started = Runner(tmp_path, env), build_parser(), time.perf_counter()
    try:
        for cmd in commands:
            run_command(cmd, runner, parser)
    finally:
        runner.close()
    print(f"\nREADME commands ({time.perf_counter() - started:.0f} s):\n{table(commands)}")
    failed = [f"README line {c.line}: {' '.join(c.argv)}\n  {c.outcome}"
              for c in commands if c.outcome.startswith("FAILED")]
    assert not failed, "\n".join(failed)
    assert sum(c.outcome == "ran" for c in commands) > 10


def test_needs_marks_name_known_reasons() -> None:
    commands = shell_commands(README.read_text())
    unknown = [(c.line, r) for c in commands for r in c.needs if r not in REASONS]
    assert not unknown, f"unknown '# needs:' reasons (known: {sorted(REASONS)}): {unknown}"


def test_shell_blocks_join_continuations_and_marks() -> None:
    text = ("```sh\n# a comment line\nrobustact train --epochs 40 \\\n    --out runs/a   # 4 min\n"
            "robustact attack --checkpoint x --eps 0.1   # needs: gpu, weights\n```\n"
            "```python\nrobustact not shell\n```\n"
            "```python\n# file: pkg/net.py\nimport torch\n```\n")
    first, second = shell_commands(text)[:2]
    assert first.line == 3 and first.argv == ["robustact", "train", "--epochs", "40", "--out",
                                              "runs/a"]
    assert first.needs == [] and second.needs == ["gpu", "weights"]
    written = shell_commands(text)[2:]
    assert [(c.argv, c.content) for c in written] == [(["write-file", "pkg/net.py"],
                                                       "import torch\n")]


def test_tiny_args_rewrites_sizes_generically() -> None:
    from robustact.cli import build_parser

    parser = build_parser()
    assert tiny_args(["train", "--epochs", "40", "--out", "r"], parser) == [
        "train", "--epochs", "1", "--out", "r", "--train-subset", "1100", "--test-subset", "32",
        "--no-progress"]
    attack = tiny_args(["attack", "--checkpoint", "r", "-n", "1000", "--eps", "0.1",
                        "--attack", "square:queries=1000", "--samples", "20"], parser)
    assert attack == ["attack", "--checkpoint", "r", "-n", "8", "--eps", "0.1", "--attack",
                      "square:queries=50", "--samples", "2", "--probe-size", "8"]
    assert tiny_args(["run", "kaf/fashion_mnist", "--list"], parser) == [
        "run", "configs/kaf/fashion_mnist.yaml", "--list"]
    assert tiny_args(["report", "runs/x"], parser) == ["report", "runs/x"]


def test_tiny_yaml_shrinks_sizes_and_grid() -> None:
    study = {"train": {"model": "small_cnn", "epochs": 5, "train_subset": 20000},
             "grid": {"activation": ["relu", "kaf"]},
             "cells": [{"id": "a"}, {"id": "k", "epochs": 3}],
             "evaluate": {"n": 500, "attacks": ["pgd:steps=50,restarts=10"]}}
    assert tiny_yaml(study, set())["cells"] == [{"id": "a"}]
    tiny = tiny_yaml(study, {"k"})
    assert tiny["train"] == {"model": "small_cnn", "epochs": 1, "train_subset": 1100,
                             "test_subset": 32}
    assert tiny["grid"] == {"activation": ["relu"]} and tiny["cells"] == [{"id": "k", "epochs": 1}]
    assert tiny["evaluate"] == {"n": 8, "probe_size": 8, "attacks": ["pgd:steps=10,restarts=1"],
                                "suite": "none"}
    assert named_files("see configs/NAME.yaml, configs/kaf/x.yaml") == {"configs/kaf/x.yaml"}


FILE_PATH = re.compile(r"(?<![\w/.])((?:configs|docs)/[\w./-]*?\.(?:ya?ml|md))")
PLACEHOLDER = re.compile(r"\b[A-Z]{2,}\b")  # configs/NAME.yaml stands for any study file


def named_files(text: str) -> set[str]:
    """The ``configs/...yaml`` and ``docs/...md`` paths ``text`` names (not placeholders)."""
    return {p for p in FILE_PATH.findall(text) if not PLACEHOLDER.search(p)}


def help_texts() -> dict[str, str]:
    """``robustact [CMD [ACTION]] --help`` of every command, by command."""
    from robustact.cli import build_parser

    texts, todo = {}, [("robustact", build_parser())]
    while todo:
        name, parser = todo.pop()
        texts[name] = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {sub}", p) for sub, p in action.choices.items()]
    return texts


def test_help_texts_name_only_files_that_exist() -> None:
    texts = help_texts()
    assert {"robustact train", "robustact run", "robustact rl eval"} <= set(texts)
    named = {(cmd, path) for cmd, text in texts.items() for path in named_files(text)}
    assert any(path == "configs/kwta02.yaml" for _, path in named)  # the pattern finds paths
    missing = sorted(f"{cmd} --help: {path}" for cmd, path in named if not (REPO / path).exists())
    assert not missing, "help texts name missing files:\n" + "\n".join(missing)


def test_readme_names_only_files_that_exist() -> None:
    named = named_files(README.read_text())
    assert "docs/scale.md" in named
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert not missing, f"README.md names missing files: {missing}"


def test_unknown_lines_are_errors_not_skips() -> None:
    assert check_other(["make", "demo"]) == ""
    assert check_other(["make", "no-such-target"]) == "no Makefile target no-such-target"
    assert "mark it" in check_other(["curl", "https://example.org"])


def test_a_failing_command_fails_and_a_marked_one_is_skipped(tmp_path: Path) -> None:
    from robustact.cli import build_parser

    text = ("```sh\nrobustact eval --checkpoint runs/missing\n"
            "robustact eval --checkpoint runs/missing   # needs: weights\n```\n")
    failing, marked = shell_commands(text)
    runner = Runner(tmp_path, dict(os.environ))
    try:
        for cmd in (failing, marked):
            run_command(cmd, runner, build_parser())
    finally:
        runner.close()
    assert failing.outcome.startswith("FAILED (exit 2): error:")
    assert marked.outcome == "skipped (needs: weights)"
