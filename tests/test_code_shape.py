"""Shape rules the code review asked for, checked on every run (issue 11)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 50


def functions(folder: str):
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(ROOT), node


def test_no_function_is_longer_than_fifty_lines():
    long = [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for folder in ("labeler", "ml_backend") for path, node in functions(folder)
            if node.end_lineno - node.lineno + 1 > MAX_LINES]
    assert not long, "split these into named steps:\n" + "\n".join(long)


def test_no_private_sdk_internals():
    """Label Studio is reached through labeler.studio.client.Studio: public SDK calls and Studio.request."""
    used = [str(p.relative_to(ROOT)) for folder in ("labeler", "ml_backend", "tests", "benchmarks")
            for p in (ROOT / folder).rglob("*.py") if "_client_wrapper" in p.read_text() and p.name != "test_code_shape.py"]
    assert not used, used
