"""Static (ast-only) enforcement of hemaseg's layered import rules.

Layers (a module may import its own layer or lower ones): 0 core, errors, version,
metrics, progress; 1 io, data, classical; 2 models; 3 engine; 4 tasks; 5 pipelines;
6 apps (the web page, the napari plugin); 7 cli, __main__ and hemaseg/__init__.py (the only module allowed to import `hemaseg`).
Task `a` may import task `b` only if b is in a's `DEPENDS = (...)`. No hemaseg imports
inside functions/classes, no import cycles, no modules outside the layout.
`if TYPE_CHECKING:` blocks are ignored. Script: `python tests/test_layers.py [ROOT]`.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import NamedTuple

DEFAULT_ROOT = Path(__file__).resolve().parents[1] / "src" / "hemaseg"
LAYERS = {"core": 0, "errors": 0, "version": 0, "metrics": 0, "progress": 0,
          "io": 1, "data": 1, "classical": 1, "models": 2, "engine": 3,
          "tasks": 4, "pipelines": 5, "apps": 6, "cli": 7, "__main__": 7}
TASK_SHARED = {"registry", "base"}  # tasks/{registry,base}.py and tasks/__init__.py are not tasks
NESTED_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


class Imp(NamedTuple):
    """One edge (importing module -> imported hemaseg module) from one import statement."""
    module: str
    loc: str      # "src/hemaseg/x.py:12"
    text: str     # the statement, unparsed on one line
    target: str
    nested: bool  # inside a function/method/class body

    def __str__(self) -> str:
        return f"{self.loc}: `{self.text}`"


def _import_nodes(tree: ast.Module):
    """Yield (node, nested) for every import statement not under `if TYPE_CHECKING:`."""
    stack = [(tree, False)]
    while stack:
        node, nested = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, nested
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in (
                getattr(node.test, "id", None), getattr(node.test, "attr", None)):
            stack.extend((n, nested) for n in node.orelse)  # the `else:` branch still counts
            continue
        inner = nested or isinstance(node, NESTED_SCOPES)
        stack.extend((child, inner) for child in ast.iter_child_nodes(node))


def _targets(node, module: str, is_pkg: bool, modules: set) -> list:
    """Modules a statement imports: `from X import y` is X.y if that is a module
    (file or package, even a namespace one) else X; relative imports are resolved;
    no implicit edges to parent packages."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module
    if node.level:
        pkg = module.split(".") if is_pkg else module.split(".")[:-1]
        if node.level > len(pkg):
            return []  # climbs out of the package: not ours
        base = ".".join(pkg[:len(pkg) - node.level + 1] + ([node.module] if node.module else []))
    return list(dict.fromkeys(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                              for a in node.names))


class Scan:
    """Every module under a package root (name -> (path, is_package)) and its hemaseg imports."""

    def __init__(self, root):
        self.root = Path(root).resolve()
        self.name = self.root.name
        self.modules, self.trees, self.imports, self.duplicates = {}, {}, [], []
        packages = set()  # every directory holding .py files, even without __init__.py
        for path in sorted(self.root.rglob("*.py")):
            rel = path.relative_to(self.root)
            packages.update(".".join([self.name, *d.parts]) for d in rel.parents if d.parts)
            parts = list(rel.with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            module = ".".join([self.name, *(parts[:-1] if is_pkg else parts)])
            if module in self.modules:  # e.g. tasks.py beside tasks/__init__.py mid-refactor
                self.duplicates.append(f"{self.loc(path, 1)}: module {module} is defined twice "
                                       f"(also {self.loc(self.modules[module][0], 1)})")
            self.modules[module] = (path, is_pkg)
            self.trees[module] = ast.parse(path.read_text(encoding="utf-8"), str(path))
        packages |= set(self.modules)  # `from X import y` targets X.y if it is in here
        for module, (path, is_pkg) in self.modules.items():
            nodes = sorted(_import_nodes(self.trees[module]), key=lambda pair: pair[0].lineno)
            for node, nested in nodes:
                for target in _targets(node, module, is_pkg, packages):
                    if target == self.name or target.startswith(self.name + "."):
                        self.imports.append(Imp(module, self.loc(path, node.lineno),
                                                ast.unparse(node), target, nested))

    def loc(self, path: Path, line: int) -> str:
        return f"{path.relative_to(self.root.parent.parent).as_posix()}:{line}"


def layer_of(module: str):
    """Layer number of a module name, or None if it is outside the layout."""
    parts = module.split(".")[1:]
    return LAYERS.get(parts[0]) if parts else 7


def task_of(module: str):
    """'wbc' for hemaseg.tasks.wbc[.x]; None for non-task and shared tasks modules."""
    parts = module.split(".")[1:]
    ok = len(parts) >= 2 and parts[0] == "tasks" and parts[1] not in TASK_SHARED
    return parts[1] if ok else None


def declared_dependencies(s: Scan):
    """({task: set of task names in its DEPENDS}, [messages for a malformed DEPENDS])."""
    deps, errors = {}, []
    for module, tree in s.trees.items():
        if not task_of(module) or module.count(".") != 2:  # only hemaseg.tasks.<a> itself
            continue
        for node in (n for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))):
            names = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "DEPENDS" for t in names):
                try:
                    deps[task_of(module)] = set(ast.literal_eval(node.value))
                except (ValueError, TypeError, SyntaxError):
                    errors.append(f"{s.loc(s.modules[module][0], node.lineno)}: "
                                  "DEPENDS must be a literal tuple/list of task names")
    return deps, errors


def check_layer_rule(root) -> list:
    """Rules 1-2: upward imports, imports of the root or of unlaid-out modules, undeclared tasks."""
    s = Scan(root)
    deps, out = declared_dependencies(s)
    for imp in s.imports:
        have, want = layer_of(imp.module), layer_of(imp.target)
        if imp.module == s.name or have is None:
            continue  # the root may import anything; unlaid-out importers are reported elsewhere
        if imp.target == s.name:
            out.append(f"{imp} -> imports the package root; only {s.name}/__init__.py may")
        elif want is None:
            out.append(f"{imp} -> layer {have} module {imp.module} imports {imp.target}, "
                       "which is outside the layered layout")
        elif want > have:
            out.append(f"{imp} -> layer {have} module {imp.module} imports "
                       f"layer {want} module {imp.target}")
        else:
            a, b = task_of(imp.module), task_of(imp.target)
            declared = deps.get(a, set())
            if a and b and a != b and b not in declared:
                out.append(f"{imp} -> task '{a}' imports task '{b}', "
                           f"not in its DEPENDS {tuple(sorted(declared))}")
    return out


def check_nested_imports(root) -> list:
    """Rule 3: no hemaseg import inside a function, method or class body (one per statement)."""
    s = Scan(root)
    return list(dict.fromkeys(f"{imp} -> {s.name} import inside a function/class body"
                              for imp in s.imports if imp.nested and imp.module != s.name))


def check_outside_layout(root) -> list:
    s = Scan(root)
    return s.duplicates + [f"{s.loc(path, 1)}: module {m} is outside the layered layout"
                           for m, (path, _) in s.modules.items() if layer_of(m) is None]


def strongly_connected_components(graph: dict) -> list:
    """Tarjan's algorithm; graph maps node -> iterable of successor nodes."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:  # v roots a component: it is v and everything above v
            component, stack[stack.index(v):] = stack[stack.index(v):], []
            on_stack.difference_update(component)
            out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def check_cycles(root) -> list:
    """Rule 4: every SCC of > 1 module, or a self-import, listing the imports that form it."""
    s = Scan(root)
    graph = {m: set() for m in s.modules}
    for imp in s.imports:  # nested imports count too; only edges to modules that exist
        if imp.target in s.modules:
            graph[imp.module].add(imp.target)
    out = []
    for comp in strongly_connected_components(graph):
        if len(comp) > 1 or comp[0] in graph[comp[0]]:
            edges = "".join(f"\n    {imp}  [{imp.module} -> {imp.target}]" for imp in s.imports
                            if imp.module in comp and imp.target in comp)
            out.append(f"cycle among {len(comp)} module(s): {', '.join(comp)}{edges}")
    return out


CHECKS = {"import cycles": check_cycles, "layer rule (rules 1-2)": check_layer_rule,
          "hemaseg imports inside functions": check_nested_imports,
          "modules outside the layout": check_outside_layout}


def _fail_if(messages: list, what: str) -> None:
    assert not messages, f"{len(messages)} {what}:\n" + "\n".join(messages)


def test_no_import_cycles():
    _fail_if(check_cycles(DEFAULT_ROOT), "import cycles")


def test_layer_rule():
    _fail_if(check_layer_rule(DEFAULT_ROOT), "layer violations")


def test_no_package_imports_inside_functions():
    _fail_if(check_nested_imports(DEFAULT_ROOT), "nested hemaseg imports")


def test_no_modules_outside_layout():
    _fail_if(check_outside_layout(DEFAULT_ROOT), "modules outside the layout")


# --- self-tests: a fake package, clean and then with planted problems ---------
CLEAN = {
    "__init__.py": "from hemaseg.cli import main\nfrom hemaseg.errors import HemasegError\n",
    "__main__.py": "from hemaseg.cli import main\nmain()\n",
    "errors.py": "class HemasegError(Exception):\n    pass\n",
    "cli.py": "from hemaseg.pipelines.analyze import run\n\n\ndef main():\n"
              "    import json  # non-hemaseg imports inside functions are fine\n",
    "core/__init__.py": "", "core/b.py": "X = 1\n", "core/a.py": "from hemaseg.core import b\n",
    "io/__init__.py": "from hemaseg.io.images import read\n",
    "io/images.py": "from hemaseg.core.a import b\nfrom ..errors import HemasegError\n",
    "models/__init__.py": "", "engine/__init__.py": "", "pipelines/__init__.py": "",
    "models/unet.py": "from typing import TYPE_CHECKING\nfrom hemaseg.io import images\n"
                      "if TYPE_CHECKING:  # upward and would close a cycle, but ignored\n"
                      "    from hemaseg.engine.loop import fit\n",
    "engine/loop.py": "from hemaseg.models.unet import Net\n",
    "tasks/__init__.py": "from hemaseg.tasks import cells, nuclei, smear10, wbc\n",  # any task
    "tasks/smear10/infer.py": "from ..base import Task\n",  # a namespace package (no __init__)
    "tasks/base.py": "class Task:\n    pass\n",
    "tasks/wbc.py": "from hemaseg.tasks.base import Task\n",
    "tasks/nuclei.py": "from .base import Task\n",
    "tasks/cells/__init__.py": 'DEPENDS: tuple = ("wbc",)\nfrom hemaseg.tasks import wbc\n'
                               "from .model import M\n",
    "tasks/cells/model.py": "from ..wbc import Task\nfrom hemaseg.tasks.base import Task as Base\n",
    "pipelines/analyze.py": "from hemaseg.tasks import get_task\nfrom hemaseg.engine import loop\n",
}
PLANTED = {  # each entry adds exactly one of the problems asserted below
    "io/writers.py": "from hemaseg.engine import loop\n",                      # upward 1 -> 3
    "metrics.py": "from hemaseg import __version__\n",                         # imports the root
    "data/cells.py": "from hemaseg.wbctype import crop\n",                     # unlaid-out target
    "tasks/cells/model.py": CLEAN["tasks/cells/model.py"] + "from hemaseg.tasks.nuclei import N\n",
    "engine/loop.py": CLEAN["engine/loop.py"] + "\n\ndef fit():\n    import numpy\n"
                      "    from hemaseg.errors import HemasegError\n",        # nested, line 6
    "core/b.py": "from . import a\n",                                          # 2-module cycle
    "progress.py": "import hemaseg.progress\n",                                # self-loop
    "wbctype.py": "from hemaseg.errors import HemasegError\n",                # leftover module
}


def _fake_package(tmp_path: Path, planted: bool) -> Path:
    root = tmp_path / "src" / "hemaseg"
    for rel, text in {**CLEAN, **(PLANTED if planted else {})}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def _locs(messages: list) -> list:
    return sorted(m.split(": ", 1)[0] for m in messages)


def test_selftest_clean_tree_passes(tmp_path, capsys):
    root = _fake_package(tmp_path, planted=False)
    assert {name: check(root) for name, check in CHECKS.items()} == {name: [] for name in CHECKS}
    assert main([str(root)]) == 0


def test_selftest_planted_problems_are_reported_exactly(tmp_path, capsys):
    root, p = _fake_package(tmp_path, planted=True), "src/hemaseg/"
    layer = check_layer_rule(root)
    assert _locs(layer) == [p + "data/cells.py:1", p + "io/writers.py:1", p + "metrics.py:1",
                            p + "tasks/cells/model.py:3"], layer
    assert "task 'cells' imports task 'nuclei'" in sorted(layer)[3]
    assert "`from hemaseg.engine import loop` -> layer 1" in sorted(layer)[1]
    assert _locs(check_nested_imports(root)) == [p + "engine/loop.py:6"]
    assert _locs(check_outside_layout(root)) == [p + "wbctype.py:1"]
    cycles = check_cycles(root)
    assert [c.splitlines()[0] for c in cycles] == [
        "cycle among 2 module(s): hemaseg.core.a, hemaseg.core.b",
        "cycle among 1 module(s): hemaseg.progress"], cycles
    assert p + "core/b.py:1: `from . import a`" in cycles[0]
    assert main([str(root)]) == 1 and "summary:" in capsys.readouterr().out


def main(argv=None) -> int:
    """Print every problem of every check, then a summary; 1 if there were any."""
    counts = {}
    for title, check in CHECKS.items():
        messages = check(Path(argv[0]) if argv else DEFAULT_ROOT)
        counts[title] = len(messages)
        print(f"== {title}: {len(messages)}\n" + "".join(f"  {m}\n" for m in messages))
    print("summary: " + ", ".join(f"{title}={n}" for title, n in counts.items()))
    return 1 if any(counts.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
