"""The house rules of the layout, checked on every run by parsing the imports (no import-linter dependency).

``cli`` -> domain packages (``ranks``, ``rollouts``, ``rerank``) -> shared core (every other top-level module).
No domain imports another, the core imports no domain, no module imports itself round a cycle (lazy imports
inside functions count too), no private name crosses modules, and the pure-logic modules load without torch.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "rankrl"
DOMAINS = ("ranks", "rollouts", "rerank", "compress")
#: pure logic at the bottom of each domain: importable without torch (module level)
PURE = ("rankrl.ranks.costs", "rankrl.ranks.budgets", "rankrl.rollouts.knapsack", "rankrl.rerank.metrics")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The rankrl module an imported dotted name lives in (``rankrl.ranks.lora.X`` -> ``rankrl.ranks.lora``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, tuple[str, ...], int, bool]]:
    """(module imported, names taken from it, line, at module level) for every rankrl import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name, modules) if alias.name.startswith("rankrl") else None
                if target:
                    out.append((target, (), node.lineno, id(node) in top))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rankrl") and not node.level:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in modules:  # ``from rankrl.ranks import apply``: the module itself
                    out.append((sub, (), node.lineno, id(node) in top))
                else:
                    out.append((_resolve(node.module, modules), (alias.name,), node.lineno, id(node) in top))
    return [o for o in out if o[0]]


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in DOMAINS):
        return parts[1]
    return "cli" if module == "rankrl.cli" else "core"


MODULES = _modules()
EDGES = {m: _imports(p, MODULES) for m, p in MODULES.items()}


def test_every_domain_exists():
    for d in DOMAINS:
        assert f"rankrl.{d}" in MODULES, f"rankrl/{d}/__init__.py is missing"


def test_imports_run_one_way():
    bad = []
    for src, edges in EDGES.items():
        a = _layer(src)
        for dst, _, line, _ in edges:
            b = _layer(dst)
            if a == b or a == "cli" or (a in DOMAINS and b == "core"):
                continue
            if src == "rankrl" and dst == "rankrl":
                continue
            bad.append(f"{MODULES[src].relative_to(ROOT.parent)}:{line} ({a}) imports {dst} ({b})")
    assert not bad, "imports that run the wrong way:\n" + "\n".join(bad)


def test_no_private_names_across_modules():
    bad = [f"{MODULES[src].relative_to(ROOT.parent)}:{line} takes {name} from {dst}"
           for src, edges in EDGES.items() for dst, names, line, _ in edges
           for name in names if name.startswith("_") and not name.startswith("__") and dst != src]  # fmt: skip
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = {m: {d for d, *_ in edges if d != m and d != "rankrl"} for m, edges in EDGES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


@pytest.mark.parametrize("module", PURE)
def test_pure_logic_loads_without_torch(module):
    tree = ast.parse(MODULES[module].read_text())
    heavy = {"torch", "transformers", "peft", "trl"}
    found = [n.lineno for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)
             and any((getattr(n, "module", None) or a.name).split(".")[0] in heavy for a in n.names)]  # fmt: skip
    assert not found, f"{module} imports a heavy library at module level (lines {found})"
    rankrl_top = [d for d, _, _, top in EDGES[module] if top]
    assert all(d in PURE or _layer(d) == "core" for d in rankrl_top), f"{module} imports {rankrl_top}"


def test_the_contract_catches_a_wrong_way_import(tmp_path):
    """The checker itself can fail: a core module importing a domain is reported."""
    core = tmp_path / "rankrl" / "plots.py"
    core.parent.mkdir()
    core.write_text("from rankrl.ranks.lora import RankedLoRA\n")
    edges = _imports(core, {"rankrl.plots": core, "rankrl.ranks.lora": core})
    assert edges and _layer("rankrl.plots") == "core" and _layer(edges[0][0]) == "ranks"
