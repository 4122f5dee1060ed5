"""The data flows one way: the data path and the models import nothing of the training loop or its
settings, and no library module imports a CLI from tools/."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOOP = {"trainer.config", "trainer.run", "trainer.psl", "trainer.settings", "trainer.losses", "trainer.runs",
        "trainer.evaluate", "trainer.checkpointing", "trainer.faults", "trainer.steplog"}


def imports(path: Path) -> set[str]:
    """Absolute module names ``path`` imports (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def test_data_and_models_do_not_import_the_loop():
    for package in ("trainer/data", "trainer/models"):
        for path in sorted((REPO / package).glob("*.py")):
            bad = sorted(m for m in imports(path) if m in LOOP or m.startswith("tools"))
            assert not bad, f"{path.relative_to(REPO)} imports {bad}"
    for path in sorted((REPO / "trainer" / "models").glob("*.py")):
        assert not any(m.startswith("trainer.data") for m in imports(path)), f"{path} imports the data path"


def test_the_library_never_imports_tools():
    for path in sorted((REPO / "trainer").rglob("*.py")):
        assert not any(m == "tools" or m.startswith("tools.") for m in imports(path)), path
