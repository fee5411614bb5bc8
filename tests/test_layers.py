"""The layout holds: the import contracts of pyproject.toml (each layer of edge_chat/
imports only from the layers below it; the two engines know nothing of each other), a
small package root, and test modules that import only shared support code."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_import_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    r = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_the_package_root_holds_the_foundations_only():
    root = sorted(p.name for p in (REPO / "edge_chat").glob("*.py"))
    assert len(root) <= 8, root


def test_no_test_module_imports_another():
    for path in sorted((REPO / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith("tests.test_"), f"{path.name} imports {name}"
