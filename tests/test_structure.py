"""The package's layering: no import cycles between fastbayes modules, no private names imported across packages."""
import ast
from pathlib import Path

import fastbayes

ROOT = Path(fastbayes.__file__).parent


def _modules():
    out = {}
    for p in ROOT.rglob("*.py"):
        rel = p.relative_to(ROOT).with_suffix("")
        parts = ["fastbayes", *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(name, path, modules):
    """(imported fastbayes module, [names]) for every module-level import (lazy imports inside functions excluded)."""
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("fastbayes"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in modules else target, alias.name))
        elif isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.startswith("fastbayes")]
    return found


def test_no_import_cycles_between_modules():
    modules = _modules()
    graph = {m: {t for t, _ in _imports(m, p, modules) if t in modules and t != m} for m, p in modules.items()}
    # a package's __init__ re-exporting its own submodules is not a cycle; drop edges into a parent package
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in graph.get(m, ()):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2
    for m in graph:
        if m not in state:
            visit(m)
    assert not cycles, f"import cycles: {cycles}"


def test_no_private_names_imported_from_another_package():
    modules = _modules()
    bad = []
    for m, p in modules.items():
        pkg = m.rsplit(".", 1)[0] if p.name != "__init__.py" else m
        for target, name in _imports(m, p, modules):
            if name and name.startswith("_") and not name.startswith("__"):
                tpkg = target.rsplit(".", 1)[0] if target in modules and not str(modules[target]).endswith("__init__.py") else target
                if tpkg != pkg:
                    bad.append(f"{m} imports {name} from {target}")
    assert not bad, bad
