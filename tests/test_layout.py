"""The data flows one way, checked as an allowlist: each package may import only the project modules listed for
it, so a new module of the training loop is forbidden to the data path and the models without anyone listing it;
the data path and the models import nothing of the loop or its settings, the models nothing of the data path, and
no library module imports a CLI from tools/."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT = ("trainer", "tools", "benchmarks", "tests")  # what counts as the project's own imports
# package directory (its modules, not its subpackages) -> the project modules they may import (with submodules)
ALLOWED = {
    "trainer/data": ("trainer.data", "trainer.bounds"),
    "trainer/models": ("trainer.models", "trainer.bounds"),
    "trainer": ("trainer",),
    "tools": ("tools", "trainer"),
    "tools/audioset": ("tools", "trainer"),
    "tools/experiments": ("tools", "trainer"),
}


def imports(path: Path) -> set[str]:
    """Absolute module names ``path`` imports (relative imports resolved against its package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = list(path.relative_to(REPO).with_suffix("").parts[:-1])
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def outside(path: Path, allowed: tuple[str, ...]) -> list[str]:
    """The project modules ``path`` imports that ``allowed`` does not cover."""
    return sorted(m for m in imports(path) if m.split(".")[0] in PROJECT
                  and not any(m == a or m.startswith(f"{a}.") for a in allowed))


def test_each_package_imports_only_what_it_is_allowed():
    packages = {str(p.parent.relative_to(REPO)) for root in ("trainer", "tools") for p in (REPO / root).rglob("*.py")}
    assert packages == set(ALLOWED), f"a package without an allowlist: {sorted(packages ^ set(ALLOWED))}"
    for package, allowed in ALLOWED.items():
        for path in sorted((REPO / package).glob("*.py")):
            bad = outside(path, allowed)
            assert not bad, f"{path.relative_to(REPO)} imports {bad}, outside {package}'s allowlist {allowed}"


def test_a_new_loop_module_is_refused_to_the_data_path(tmp_path: Path):
    module = tmp_path / "reader.py"
    module.write_text("import numpy\nfrom trainer.data.atomic import atomic_write\nfrom trainer.bounds import check_range\n"
                      "from trainer.new_loop import Phase\nimport trainer.run\n")
    assert outside(module, ALLOWED["trainer/data"]) == ["trainer.new_loop", "trainer.new_loop.Phase", "trainer.run"]
    assert outside(module, ALLOWED["trainer"]) == []
