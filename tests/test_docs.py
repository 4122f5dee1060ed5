"""Docs that cannot rot: every fenced shell command in README.md and docs/*.md is checked, and every relative
link resolves.

A ``python -m MODULE ...`` (or ``python path/to/tool.py ...``) line runs the CLI's ``--help``: it must exit 0,
and each option of our own CLIs must have help text that gives its default. A ``python trainer/run.py CONFIG ...``
or ``accelerate launch ... trainer/run.py CONFIG ...`` line runs ``--check`` on the launch's number of processes
(datasets not built yet are notes, not failures). ``bash SCRIPT`` needs the script. A command of another kind fails
until this file learns to check it. In a ``console`` block, the lines after ``$ command`` are its expected output
(``...`` skips): each must appear, in order, in what the check printed. All CLI checks run in one subprocess
(tests/scripts/doc_commands.py).
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from runkit import REPO, repo_pythonpath, tiny_config

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = ("bash", "sh", "console")
# every CLI of ours (a file that builds an argparse parser), as its docs run it: trainer/run.py as a script
CLIS = [{"kind": "help", "path": "trainer/run.py"}] + [
    {"kind": "help", "module": ".".join(p.relative_to(REPO).with_suffix("").parts)}
    for d in ("tools", "trainer", "benchmarks") for p in sorted((REPO / d).rglob("*.py"))
    if "ArgumentParser(" in p.read_text() and p.relative_to(REPO) != Path("trainer/run.py")]
PLAIN = {"cd", "git", "source", "export", "pip", "sbatch"}  # nothing of ours to check


@dataclass
class Command:
    where: str  # file:line
    text: str
    expected: list[str] = field(default_factory=list)  # a console block's output lines


def fenced_commands(path: Path) -> list[Command]:
    """The commands of the file's bash/sh/console blocks; continuation lines joined, comments kept for shlex."""
    commands: list[Command] = []
    lang, pending, start = None, "", 0
    for n, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            lang = None if lang is not None else (stripped[3:].strip() or "")
            continue
        if lang not in SHELL:
            continue
        if lang == "console" and not pending:
            if not stripped.startswith("$ "):
                if commands and stripped and stripped != "...":
                    commands[-1].expected.append(stripped)
                continue
            stripped = stripped[2:]
        if not pending:
            start = n
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = (pending + stripped).strip()
        pending = ""
        if text and not text.startswith("#"):
            commands.append(Command(f"{path.relative_to(REPO)}:{start}", text))
    return commands


def _world(accelerate_args: list[str]) -> int:
    """Processes of an ``accelerate launch``: --num_processes, else its --config_file's num_processes, else 1."""
    opts = {a: b for a, b in zip(accelerate_args, accelerate_args[1:]) if a.startswith("--")}
    if "--num_processes" in opts:  # a shell expression ($((SLURM_NNODES * 8))) is not known here: 1
        return int(opts["--num_processes"]) if opts["--num_processes"].isdigit() else 1
    if "--config_file" in opts:
        return int(yaml.safe_load((REPO / opts["--config_file"]).read_text()).get("num_processes", 1))
    return 1


def classify(text: str) -> dict:
    """The check for one command line: a job for doc_commands.py, {"exists": path}, {"plain": True} or
    {"error": why}."""
    if re.match(r"[A-Za-z_][A-Za-z0-9_]*=\$\(", text):  # VAR=$(command): a shell variable, nothing of ours
        return {"plain": True}
    argv, env = shlex.split(text, comments=True), {}
    while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):  # VAR=value prefixes
        name, _, value = argv.pop(0).partition("=")
        env[name] = value
    if not argv:
        return {"plain": True}
    head = argv[0]
    if head == "srun":  # srun [options] COMMAND ...: check the command
        return classify(shlex.join(list(itertools.dropwhile(lambda a: a.startswith("-"), argv[1:]))))
    if head in ("bash", "sh") and argv[1:2] == ["-c"]:
        return classify(argv[2])
    if head in ("python", "python3"):
        if argv[1:2] == ["-m"]:
            return {"kind": "help", "module": argv[2]}
        if argv[1:2] == ["-c"]:  # a snippet: nothing of ours to ask for --help
            return {"plain": True}
        if argv[1] == "trainer/run.py":
            return {"kind": "check", "argv": [a for a in argv[2:] if a != "--check"],
                    "world": int(env.get("WORLD_SIZE", 1))}
        if argv[1].endswith(".py"):
            return {"kind": "help", "path": argv[1]}
    if argv[:2] == ["accelerate", "launch"]:
        if "-m" in argv:  # accelerate launch [options] -m MODULE ...
            return {"kind": "help", "module": argv[argv.index("-m") + 1]}
        script = next((i for i, a in enumerate(argv) if a.endswith(".py")), None)
        if script is not None and argv[script] == "trainer/run.py":
            return {"kind": "check", "argv": [a for a in argv[script + 1:] if a != "--check"],
                    "world": _world(argv[2:script])}
        return {"error": "an accelerate launch of something other than trainer/run.py"}
    if head in ("bash", "sh"):
        return {"exists": argv[1]}
    if head in PLAIN:
        return {"plain": True}
    return {"error": f"no rule to check a {head!r} command (tests/test_docs.py)"}


def all_commands() -> list[Command]:
    return [c for path in DOCS for c in fenced_commands(path)]


def run_jobs(jobs: list[dict], tmp_path: Path) -> list[dict]:
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "tests/scripts/doc_commands.py", str(out)], input=json.dumps(jobs),
                          cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = repo_pythonpath(os.environ)
    return env


def test_extraction() -> None:
    """The parser reads blocks, continuations, comments, env prefixes and console prompts as a shell would."""
    cmds = all_commands()
    assert len(cmds) >= 30, [c.text for c in cmds]
    texts = [c.text for c in cmds]
    assert any(t.startswith("bash tools/run_demo.sh") for t in texts)  # the quick start is in the README
    joined = next(c for c in cmds if "--related-only" in c.text)  # a command over two lines
    assert "--model runs/balanced_as_round1" in joined.text and "\\" not in joined.text
    assert classify("ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 trainer/run.py "
                    "configs/demo.yaml optim.lr=1e-3  # a comment") == \
        {"kind": "check", "argv": ["configs/demo.yaml", "optim.lr=1e-3"], "world": 2}
    assert classify("accelerate launch --config_file accelerate_config.yaml trainer/run.py configs/full_as.yaml")[
        "world"] == 4
    assert classify("WORLD_SIZE=8 python trainer/run.py configs/psl_base.yaml --check")["world"] == 8
    assert classify("accelerate launch --num_processes 2 -m trainer.predict --checkpoint r --dataset d --out o") == \
        {"kind": "help", "module": "trainer.predict"}
    assert classify('srun --nodes=2 bash -c "accelerate launch --num_processes $((N * 8)) trainer/run.py '
                    'configs/demo.yaml run.dir=/scratch/$USER"') == \
        {"kind": "check", "argv": ["configs/demo.yaml", "run.dir=/scratch/$USER"], "world": 1}
    assert classify('HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)') == {"plain": True}
    assert "error" in classify("rm -rf runs")


def test_every_command_checks(tmp_path: Path, built_shards: dict[str, Path], synthetic_dir: Path) -> None:
    """Every command in the docs passes its check; so does --check on a config whose datasets exist (it resolves
    the splits and touches no run directory). Three commands that must fail do: the checks can fail."""
    cmds = all_commands()
    jobs, problems, index = [], [], {}
    for c in cmds:
        rule = classify(c.text)
        if "error" in rule:
            problems.append(f"{c.where}: {c.text}\n    {rule['error']}")
        elif "exists" in rule:
            if not (REPO / rule["exists"]).is_file():
                problems.append(f"{c.where}: {c.text}\n    {rule['exists']} does not exist")
        elif "kind" in rule:
            key = json.dumps(rule, sort_keys=True)  # each distinct check once
            if key not in index:
                index[key] = len(jobs)
                jobs.append(rule)
    for rule in CLIS:  # every CLI's --help, also those the docs do not show
        key = json.dumps(rule, sort_keys=True)
        if key not in index:
            index[key] = len(jobs)
            jobs.append(rule)
    config = tiny_config(tmp_path / "tiny.yaml", built_shards, synthetic_dir, tmp_path / "runs")
    controls = [{"kind": "check", "argv": [str(config)], "world": 2},
                {"kind": "check", "argv": ["configs/demo.yaml", "optim.lrr=1"], "world": 1},
                {"kind": "check", "argv": ["configs/full_as.yaml"], "world": 3},
                {"kind": "help", "module": "tools.no_such_tool"}]
    results = run_jobs(jobs + controls, tmp_path)
    reported = set()
    for rule in CLIS:
        r = results[index[json.dumps(rule, sort_keys=True)]]
        if not r["ok"]:
            reported.add(json.dumps(rule, sort_keys=True))
            name = f"-m {rule['module']}" if "module" in rule else rule["path"]
            problems.append(f"python {name} --help\n    " + "\n    ".join(r["problems"]))
    for c in cmds:
        rule = classify(c.text)
        if "kind" not in rule:
            continue
        r = results[index[json.dumps(rule, sort_keys=True)]]
        if json.dumps(rule, sort_keys=True) in reported:  # its --help problems are listed once
            continue
        if not r["ok"]:
            problems.append(f"{c.where}: {c.text}\n    " + "\n    ".join(r["problems"]))
            continue
        lines, at = r["output"].splitlines(), 0
        for want in c.expected:  # a console block's output, in order
            at = next((i + 1 for i in range(at, len(lines)) if lines[i].strip() == want), None)
            if at is None:
                problems.append(f"{c.where}: {c.text}\n    the docs show {want!r}, not in its output:\n"
                                + r["output"][:2000])
                break
    assert not problems, f"{len(problems)} docs command(s) fail their check:\n" + "\n".join(problems)

    tiny, unknown_key, batch, no_module = results[len(jobs):]
    assert tiny["ok"], tiny["problems"]
    assert "2 processes: 4 clips per process and step × 2 × 1 accumulation = 8 clips per optimizer step" in \
        tiny["output"], tiny["output"]
    assert re.search(r"data: \d+ train, \d+ valid, 16 eval clips; 6 classes", tiny["output"]), tiny["output"]
    assert "note:" not in tiny["output"] and not (tmp_path / "runs").exists()  # --check creates no run directory
    assert not unknown_key["ok"] and "optim.lrr: unknown key" in unknown_key["problems"][0]
    assert not batch["ok"] and "100 clips do not split evenly over 3 processes" in batch["problems"][0]
    assert not no_module["ok"]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.strip().startswith("```"):
            in_code = not in_code
        m = re.match(r"#{1,6} (.*)", line)
        if m and not in_code:
            slug = _slug(m.group(1))
            out.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every markdown link or image outside code."""
    out, in_code = [], False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            in_code = not in_code
            continue
        if not in_code:
            out += [(n, t) for t in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", line))]
    return out


def test_links_resolve() -> None:
    problems, checked = [], 0
    for path in DOCS:
        for n, target in links(path):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            checked += 1
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                problems.append(f"{path.relative_to(REPO)}:{n}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{path.relative_to(REPO)}:{n}: {target}: no heading #{anchor} in {dest.name}")
    assert checked >= 20
    assert not problems, "\n".join(problems)


def test_slug() -> None:
    assert _slug("`--check`: a config validated without training") == "--check-a-config-validated-without-training"
    assert _slug("Why the ordering breaks at this size: controlled runs") == \
        "why-the-ordering-breaks-at-this-size-controlled-runs"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_readme_and_pages_start_with_commands(path: Path) -> None:
    """Each guide page opens with its commands (the first block after the title is a shell block)."""
    if path.name == "README.md":
        assert len(path.read_text().splitlines()) <= 200
        return
    body = path.read_text().split("\n", 1)[1].lstrip()
    assert body.startswith(("```bash", "```sh", "```console")), f"{path.name} does not start with its commands"
