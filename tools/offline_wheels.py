"""Download the wheels a machine without network needs to run the project: exactly those its Python lacks.

    python tools/offline_wheels.py --python 3.12 --platform manylinux_2_28_x86_64 --have installed.txt \
        --out wheels/ [--cuda 13|12] [--dev] [--list benchmarks/gpu_wheels.txt]

Runs where the network is, with Python ≥ 3.11 (tomllib). ``--have``: what the target already has, as
``pip list --format=freeze`` (or ``pip freeze``) prints it there; names alone will do. The project's requirements (pyproject.toml, with the DALI build of ``--cuda``) that the target does not satisfy
are resolved for the target's Python and platform (pip's resolver, holding the target's installed versions
fixed), and the packages of that closure the target lacks are downloaded into ``--out``, one wheel each. On
the target: ``pip install --no-index --find-links wheels/ ...`` (tools/setup_env.sh and benchmarks/gpu_check.sh
do that when given the folder). ``--list`` writes the wheels' names and sizes, one per line, for a dry run to
show without the network.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

REPO = Path(__file__).resolve().parents[1]


def platforms(platform: str) -> list[str]:
    """``platform`` and the older manylinux tags a machine of that tag also runs (pip matches tags exactly)."""
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", platform)
    if not m:
        return [platform]
    major, minor, arch = int(m[1]), int(m[2]), m[3]
    tags = [f"manylinux_{major}_{n}_{arch}" for n in range(minor, 16, -1)]
    aliases = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return tags + [f"{alias}_{arch}" for n, alias in aliases.items() if major == 2 and n <= minor]


def read_have(path: Path) -> dict[str, str]:
    """Installed packages (canonical name → version) from ``pip list --format=freeze`` / ``pip freeze`` output."""
    have = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        if not sep:
            name = re.split(r"\s*@\s*", line)[0]
        have[canonicalize_name(name)] = version.strip()
    return have


def project_requirements(cuda: str, dev: bool) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    reqs = project["dependencies"] + extras[f"cuda{cuda}"] + (extras["test"] if dev else [])
    return [Requirement(r) for r in reqs]


def _satisfied(req: Requirement, version: str) -> bool:
    try:
        return SpecifierSet(str(req.specifier)).contains(Version(version).public, prereleases=True)
    except InvalidVersion:
        return True  # a version pip could install but packaging cannot compare: trust the target


def missing_requirements(reqs: list[Requirement], have: dict[str, str], python: str) -> list[Requirement]:
    """The requirements that apply to a Linux x86-64 CPython ``python`` and are not met by ``have``."""
    env = {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython", "extra": ""}
    out = []
    for req in reqs:
        if req.marker is not None and not Marker(str(req.marker)).evaluate(env):
            continue
        name = canonicalize_name(req.name)
        if name in have and _satisfied(req, have[name]):
            continue
        if name in have:
            print(f"note: {req.name} {have[name]} is installed there but {req} is required: a wheel is added",
                  file=sys.stderr)
        out.append(req)
    return out


def _pip_target(python: str, platform: str) -> list[str]:
    return ["--only-binary=:all:", "--python-version", python, "--implementation", "cp",
            *[a for p in platforms(platform) for a in ("--platform", p)]]


def resolve(reqs: list[Requirement], have: dict[str, str], python: str, platform: str) -> list[tuple[str, str]]:
    """(name, version) of every package ``reqs`` need on the target, the installed ones held at their versions."""
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        # the installed versions (local labels such as +cu130 dropped: the index has the public versions)
        constraints.write_text("".join(f"{n}=={Version(v).public}\n" for n, v in have.items() if _is_version(v)
                                       and canonicalize_name(n) not in {canonicalize_name(r.name) for r in reqs}))
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--target",
               str(Path(tmp) / "t"), "--report", str(report), "-c", str(constraints), *_pip_target(python, platform),
               *[str(r) for r in reqs]]
        subprocess.run(cmd, check=True)
        items = json.loads(report.read_text())["install"]
    return sorted((canonicalize_name(i["metadata"]["name"]), i["metadata"]["version"]) for i in items)


def _is_version(v: str) -> bool:
    try:
        Version(v)
        return True
    except InvalidVersion:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", required=True, help="the target's Python, e.g. 3.12")
    ap.add_argument("--platform", required=True, help="the target's wheel platform, e.g. manylinux_2_28_x86_64")
    ap.add_argument("--have", type=Path, required=True, help="pip list --format=freeze output of the target")
    ap.add_argument("--out", type=Path, required=True, help="folder for the wheels")
    ap.add_argument("--cuda", choices=("13", "12"), default="13",
                    help="torch's CUDA major there (the DALI build; default: %(default)s)")
    ap.add_argument("--dev", action="store_true", help="also pytest and pytest-timeout")
    ap.add_argument("--list", type=Path, default=None, help="write 'wheel size' lines here")
    a = ap.parse_args(argv)
    have = read_have(a.have)
    reqs = missing_requirements(project_requirements(a.cuda, a.dev), have, a.python)
    if not reqs:
        print("the target has every requirement: nothing to download")
        return 0
    need = [(n, v) for n, v in resolve(reqs, have, a.python, a.platform) if n not in have]
    a.out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(a.out),
                    *_pip_target(a.python, a.platform), *[f"{n}=={v}" for n, v in need]], check=True)
    names = {n for n, _ in need}
    wheels = sorted(w for w in a.out.glob("*.whl") if canonicalize_name(w.name.split("-")[0]) in names)
    lines = [f"{w.name} {w.stat().st_size}" for w in wheels]
    print("\n".join(lines))
    total = sum(w.stat().st_size for w in wheels)
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB in {a.out} (requirements missing there: "
          f"{', '.join(r.name for r in reqs)})")
    if a.list:
        a.list.write_text("".join(line + "\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
