"""Checks the package's shape: no file in atasks/ over MAX_FILE lines, no class over MAX_CLASS
lines (from its ``class`` line to its last), and no import circle among atasks' modules (imports
under ``if TYPE_CHECKING:`` and inside functions count). Exit status 1 lists what breaks them.

    .venv/bin/python dev/shape.py [--files-only PATH...]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_FILE = 500
MAX_CLASS = 300
ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "atasks"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The atasks modules ``path`` imports (a name imported from a package counts as its module
    when it is one, else as the package)."""
    found: set[str] = set()
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    found.add(f"{base}.{alias.name}")
                elif base in modules:
                    found.add(base)
    found.discard(here)
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle through each strongly connected group of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def main() -> int:
    paths = sorted(PACKAGE.rglob("*.py"))
    problems: list[str] = []
    for path in paths:
        lines = path.read_text().splitlines()
        if len(lines) > MAX_FILE:
            problems.append(f"{path.relative_to(ROOT)}: {len(lines)} lines (> {MAX_FILE})")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_CLASS:
                    problems.append(
                        f"{path.relative_to(ROOT)}:{node.lineno}: class {node.name}: "
                        f"{size} lines (> {MAX_CLASS})"
                    )
    modules = {module_name(path) for path in paths}
    graph = {module_name(path): imports(path, modules) for path in paths}
    for group in circles(graph):
        problems.append("import circle among: " + ", ".join(group))
    print("\n".join(problems) or "shape ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
