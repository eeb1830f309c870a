"""The code's shape, kept: no import cycle among the package's modules (imports inside functions
count), W&B called from tracking.py only, and no module over 250 lines unless its opening
docstring says why ("Why it is long: ...")."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "w2s_lightning"
MODULES = {path.stem: path for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
LONG = 250


def imports_of(path: Path) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("w2s_lightning"):
            names = [node.module.split(".", 1)[1]] if "." in node.module else [a.name for a in node.names]
            found.update(n for n in names if n in MODULES)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith("w2s_lightning."))
    return found


def test_no_module_imports_itself_back():
    graph = {name: imports_of(path) for name, path in MODULES.items()}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            name, path = stack.pop()
            for nxt in graph[name]:
                if nxt == start:
                    return [*path, start]
                if nxt not in path:
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = {name: cycle for name in graph if (cycle := cycle_from(name))}
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles.values())


def test_only_tracking_calls_wandb():
    callers = [name for name, path in MODULES.items() if "wandb." in path.read_text() and name != "tracking"]
    assert not callers


def test_a_module_over_250_lines_says_why():
    unexplained = [
        f"{name} ({n} lines)"
        for name, path in MODULES.items()
        if (n := len(path.read_text().splitlines())) > LONG
        and "Why it is long:" not in (ast.get_docstring(ast.parse(path.read_text())) or "")
    ]
    assert not unexplained
