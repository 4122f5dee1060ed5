"""Run the docs' command checks in one process (tests/test_docs.py): JSON jobs on stdin, JSON results to the file
named by the first argument (the CLIs print to stdout).

A job is {"kind": "help", "module": M} or {"kind": "help", "path": P} (the CLI run with --help, as ``python -m M``
or ``python P`` would run it: it must exit 0, and every option of our own parsers must have help text giving its
default), or {"kind": "check", "argv": [CONFIG, OVERRIDES...], "world": N} (trainer/run.py's --check on N
processes: exit 0). One process, because importing torch and DALI once costs more than all the checks.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import runpy
import sys
from contextlib import redirect_stderr, redirect_stdout

OURS = ("tools", "trainer", "benchmarks")
FLAGS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction, argparse._CountAction,
         argparse._HelpAction, argparse._VersionAction)


def option_problems(parser: argparse.ArgumentParser) -> list[str]:
    """Options whose --help does not say what they are, or (with a default) what the default is."""
    problems = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        name = "/".join(action.option_strings) or action.dest
        if not (action.help or "").strip():
            problems.append(f"{name}: no help text")
        elif (action.option_strings and not action.required and not isinstance(action, FLAGS)
              and action.default not in (None, argparse.SUPPRESS) and "default" not in action.help.lower()):
            problems.append(f"{name}: the help does not give the default ({action.default!r})")
    return problems


def run_help(job: dict) -> dict:
    parsers: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.print_help

    def spy(self: argparse.ArgumentParser, file=None) -> None:
        parsers.append(self)
        original(self, file)

    target = job.get("module") or job["path"]
    argparse.ArgumentParser.print_help = spy
    argv, sys.argv = sys.argv, [target, "--help"]
    out = io.StringIO()
    code: object = "returned without exiting"
    try:
        with redirect_stdout(out), redirect_stderr(out):
            if "module" in job:
                runpy.run_module(job["module"], run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(job["path"], run_name="__main__")
    except SystemExit as e:
        code = e.code or 0
    except BaseException as e:  # an import error: report it as the command's failure
        code = f"{type(e).__name__}: {e}"
    finally:
        argparse.ArgumentParser.print_help = original
        sys.argv = argv
    problems = [] if code == 0 else [f"--help: exit {code}"]
    ours = target.replace("/", ".").startswith(OURS)
    if code == 0 and ours and parsers:
        problems += option_problems(parsers[-1])
    return {"ok": not problems, "problems": problems, "output": out.getvalue()}


def run_check(job: dict) -> dict:
    from trainer.config import ConfigError
    from trainer.run import main

    os.environ["WORLD_SIZE"] = str(job["world"])
    os.environ.pop("RANK", None)
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            main([*job["argv"], "--check"])
    except (ConfigError, OSError, ValueError) as e:
        return {"ok": False, "problems": [f"--check: {type(e).__name__}: {e}"], "output": out.getvalue()}
    return {"ok": True, "problems": [], "output": out.getvalue()}


def main() -> None:
    jobs = json.load(sys.stdin)
    results = [run_help(job) if job["kind"] == "help" else run_check(job) for job in jobs]
    with open(sys.argv[1], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
