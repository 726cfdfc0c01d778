"""One-way layering of rag/, index/, finetune/ and api/ (docs/design.md, "Layers"), checked on the source.

    python tests/test_layering.py      # the module graph's layers, and anything against them

The imports are read with `ast`, never run. Every import counts, wherever it stands: at module level,
inside a function (the lazy imports that keep `import rag` light are checked exactly like the others)
or under `if TYPE_CHECKING:`. A module that uses `importlib` imports every project module whose full
name it spells as a string (the CLI registry's subcommand modules, the generator backends), except a
string passed straight to a call other than `import_module` (`importlib.resources.files("api")`). Not
counted: the implicit run of a parent package's `__init__` when a submodule is imported (package
`__init__` files import nothing heavy or upward; they are modules of the graph like any other).

A test fails on (a) an import from a lower layer into a higher one, (b) any import cycle between
modules, in one layer or across, (c) a subcommand module that imports the CLI registry or another
subcommand module, and (d) a module that no layer names (a new module must be placed).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("rag", "index", "finetune", "api")

# Lowest first. A module may import its own layer (without a cycle) and the layers below it.
# "pkg.*" names every module below pkg; an exact name wins over a pattern, a longer pattern over a shorter.
LAYERS: list[tuple[str, list[str]]] = [
    (
        "foundation",
        ["rag.config", "rag.types", "rag.catalog", "rag.cleaning", "rag.synthetic", "rag.quiet"],
    ),
    ("index", ["index", "index.*"]),
    (
        "answering",  # retrieval, prompt, generators, grounding, the pipeline and the `rag` library facade
        [
            "rag",
            "rag.query",
            "rag.grounding",
            "rag.prompt",
            "rag.safety",
            "rag.tokens",
            "rag.models",
            "rag.generators",
            "rag.generators.*",
            "rag.retrieval",
            "rag.pipeline",
            "rag.langchain",
        ],
    ),
    ("applications", ["rag.evaluation", "rag.evaluation.*", "finetune", "finetune.*"]),
    (
        "interfaces",  # command lines, the terminal chat, the HTTP API
        [
            "rag.cli",
            "rag.cli_common",
            "rag.chat",
            "rag.compare",
            "rag.bench",
            "rag.audit",
            "index.cli",
            "finetune.cli",
            "rag.evaluation.cli",
            "api",
            "api.*",
        ],
    ),
]

REGISTRY = "rag.cli"  # the one module that imports the subcommand modules (its `_PLUGINS` list)


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    how: str  # "import", "lazy import" (inside a function), "importlib string"


def project_modules(root: Path, packages: Sequence[str] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of `packages` under `root`."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: Mapping[str, Path]) -> str | None:
    """The project module `name` is, or lives in (`rag.config.Config` -> `rag.config`); None outside."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


class _ImportVisitor(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, modules: Mapping[str, Path]) -> None:
        self.module, self.modules = module, modules
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[tuple[str, int, str]] = []
        self.strings: list[tuple[str, int]] = []
        self.uses_importlib = False
        self._depth = 0
        self._not_imports: set[int] = set()

    def _how(self) -> str:
        return "lazy import" if self._depth else "import"

    def _function(self, node: ast.AST) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.uses_importlib |= alias.name.split(".")[0] == "importlib"
            self.found.append((alias.name, node.lineno, self._how()))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")[: len(self.package.split(".")) - (node.level - 1)]
            parent = ".".join(base + ([node.module] if node.module else []))
        else:
            parent = node.module or ""
        self.uses_importlib |= parent.split(".")[0] == "importlib"
        for alias in node.names:
            # `from pkg import sub` imports the submodule pkg.sub; `from pkg import name` imports pkg
            child = f"{parent}.{alias.name}"
            self.found.append((child if child in self.modules else parent, node.lineno, self._how()))

    def visit_Call(self, node: ast.Call) -> None:
        # a module name handed to another call is data, not an import: importlib.resources.files("api")
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name not in ("import_module", "__import__"):
            self._not_imports.update(id(a) for a in node.args if isinstance(a, ast.Constant))
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and node.value in self.modules and id(node) not in self._not_imports:
            self.strings.append((node.value, node.lineno))


def imports_of(module: str, path: Path, modules: Mapping[str, Path]) -> list[Import]:
    """The project modules that `module` (the file `path`) imports, one entry per import."""
    visitor = _ImportVisitor(module, path.name == "__init__.py", modules)
    visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    found = list(visitor.found)
    if visitor.uses_importlib:
        found += [(name, line, "importlib string") for name, line in visitor.strings]
    result = []
    for name, line, how in found:
        target = _resolve(name, modules)
        if target is not None and target != module:
            result.append(Import(module, target, line, how))
    return result


def import_graph(root: Path = REPO, packages: Sequence[str] = PACKAGES) -> dict[str, list[Import]]:
    modules = project_modules(root, packages)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(module: str, layers: Sequence[tuple[str, Sequence[str]]] = LAYERS) -> int | None:
    """The index of the layer that names `module` (exact name first, then the longest `pkg.*`)."""
    best: tuple[int, int] | None = None  # (specificity, layer)
    for index, (_, names) in enumerate(layers):
        for pattern in names:
            if pattern == module:
                return index
            if (
                pattern.endswith(".*")
                and module.startswith(pattern[:-1])
                and (best is None or len(pattern) > best[0])
            ):
                best = (len(pattern), index)
    return None if best is None else best[1]


def unplaced(
    graph: Mapping[str, list[Import]], layers: Sequence[tuple[str, Sequence[str]]] = LAYERS
) -> list[str]:
    return sorted(m for m in graph if layer_of(m, layers) is None)


def upward_imports(
    graph: Mapping[str, list[Import]], layers: Sequence[tuple[str, Sequence[str]]] = LAYERS
) -> list[str]:
    """One line per import from a lower layer into a higher one."""
    problems = []
    for module, found in sorted(graph.items()):
        here = layer_of(module, layers)
        for imp in found:
            there = layer_of(imp.target, layers)
            if here is not None and there is not None and there > here:
                problems.append(
                    f"{module} ({layers[here][0]}) imports {imp.target} ({layers[there][0]}) at line "
                    f"{imp.line} ({imp.how})"
                )
    return problems


def cycles(graph: Mapping[str, Iterable[Import]]) -> list[list[str]]:
    """The import cycles: every strongly connected group of two or more modules (Tarjan), sorted."""
    edges = {m: sorted({i.target for i in found if i.target in graph}) for m, found in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(start: str) -> None:  # iterative, so a long chain cannot hit the recursion limit
        work = [(start, iter(edges[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return sorted(groups)


def describe_cycle(group: Sequence[str], graph: Mapping[str, Iterable[Import]]) -> str:
    members = set(group)
    links = sorted(
        {
            f"{i.source} -> {i.target} (line {i.line}, {i.how})"
            for m in group
            for i in graph[m]
            if i.target in members
        }
    )
    return " <-> ".join(group) + ": " + "; ".join(links)


def registered_subcommands(root: Path = REPO, registry: str = REGISTRY) -> list[str]:
    """The module names in the registry's `_PLUGINS` list."""
    path = project_modules(root)[registry]
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_PLUGINS" for t in node.targets):
            value = ast.literal_eval(node.value)
            return [str(v) for v in value]
    raise AssertionError(f"{path}: no _PLUGINS list of subcommand modules")


def registry_violations(
    graph: Mapping[str, Iterable[Import]], registry: str, subcommands: Sequence[str]
) -> list[str]:
    """Imports of the registry by anyone, and of a subcommand module by anyone but the registry."""
    problems = []
    for module, found in sorted(graph.items()):
        for imp in found:
            if imp.target == registry:
                problems.append(f"{module} imports the CLI registry {registry} at line {imp.line}")
            elif imp.target in subcommands and module != registry:
                problems.append(f"{module} imports the subcommand module {imp.target} at line {imp.line}")
    return problems


# --------------------------------------------------------------------------- the project


def test_every_module_is_placed_in_a_layer() -> None:
    graph = import_graph()
    assert len(graph) > 50, f"found only {len(graph)} modules under {REPO}"
    assert unplaced(graph) == [], "modules no layer names (add them to LAYERS and docs/design.md)"


def test_imports_follow_the_layers() -> None:
    assert upward_imports(import_graph()) == []


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert [describe_cycle(g, graph) for g in cycles(graph)] == []


def test_one_cli_registry_and_subcommands_that_do_not_import_each_other() -> None:
    subcommands = registered_subcommands()
    assert {"index.cli", "finetune.cli", "api.cli", "rag.evaluation.cli", "rag.bench"} <= set(subcommands)
    graph = import_graph()
    assert registry_violations(graph, REGISTRY, subcommands) == []
    # the registry really is seen importing them (through importlib), so the check above has teeth
    seen = {i.target for i in graph[REGISTRY] if i.how == "importlib string"}
    assert set(subcommands) <= seen


# --------------------------------------------------------------------------- the checker itself


def _tree(root: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


BAD_TREE = {
    "low/__init__.py": "",
    "low/base.py": "import os\n\ndef f():\n    from high.top import g  # a lazy import against the direction\n",
    "low/a.py": "from low import b\n",
    "low/b.py": "from .c import x\n",
    "low/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from low.a import y\n",
    "high/__init__.py": "",
    "high/top.py": "import low.base\n",
    "high/registry.py": "import importlib\n_PLUGINS = ['high.one', 'high.two']\n",
    "low/data.py": "import importlib.resources\nFILES = importlib.resources.files('high.top')  # data, not an import\n",
    "high/one.py": "def run():\n    from high.registry import helper\n",
    "high/two.py": "from high import one\n",
}
BAD_LAYERS = [("low", ["low", "low.*"]), ("high", ["high", "high.*"])]


def test_checker_finds_upward_lazy_imports(tmp_path: Path) -> None:
    graph = import_graph(_tree(tmp_path, BAD_TREE), ("low", "high"))
    assert upward_imports(graph, BAD_LAYERS) == [
        "low.base (low) imports high.top (high) at line 4 (lazy import)"
    ]


def test_checker_finds_cycles_through_relative_and_type_checking_imports(tmp_path: Path) -> None:
    graph = import_graph(_tree(tmp_path, BAD_TREE), ("low", "high"))
    found = cycles(graph)
    # low.a -> low.b -> low.c -> low.a; low.base <-> high.top; the registry <-> high.one via importlib
    assert ["low.a", "low.b", "low.c"] in found
    assert ["high.top", "low.base"] in found
    assert ["high.one", "high.registry", "high.two"] in found  # two -> one -> registry -> two
    assert len(found) == 3


def test_checker_finds_registry_violations(tmp_path: Path) -> None:
    graph = import_graph(_tree(tmp_path, BAD_TREE), ("low", "high"))
    assert registry_violations(graph, "high.registry", ["high.one", "high.two"]) == [
        "high.one imports the CLI registry high.registry at line 2",
        "high.two imports the subcommand module high.one at line 1",
    ]


def test_checker_passes_a_clean_tree_and_flags_unplaced_modules(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "low/__init__.py": "",
            "low/a.py": "import json\n",
            "low/b.py": "from low.a import thing\n\ndef f():\n    import low.a\n",
            "high/__init__.py": "from low import b\n",
            "stray/__init__.py": "",
        },
    )
    graph = import_graph(root, ("low", "high", "stray"))
    assert upward_imports(graph, BAD_LAYERS) == []
    assert cycles(graph) == []
    assert unplaced(graph, BAD_LAYERS) == ["stray"]
    assert [(i.target, i.how) for i in graph["low.b"]] == [("low.a", "import"), ("low.a", "lazy import")]


def test_layer_patterns_prefer_exact_names() -> None:
    assert LAYERS[layer_of("index.cli")][0] == "interfaces"  # type: ignore[index]
    assert LAYERS[layer_of("index.store")][0] == "index"  # type: ignore[index]
    assert LAYERS[layer_of("rag.evaluation.cli")][0] == "interfaces"  # type: ignore[index]
    assert LAYERS[layer_of("rag.evaluation.runner")][0] == "applications"  # type: ignore[index]
    assert layer_of("elsewhere.module") is None


if __name__ == "__main__":
    graph = import_graph()
    for number, (name, _) in enumerate(LAYERS):
        print(f"{number} {name}: {' '.join(sorted(m for m in graph if layer_of(m) == number))}")
    problems = (
        [f"unplaced: {m}" for m in unplaced(graph)]
        + [f"upward: {p}" for p in upward_imports(graph)]
        + [f"cycle: {describe_cycle(g, graph)}" for g in cycles(graph)]
        + [f"registry: {p}" for p in registry_violations(graph, REGISTRY, registered_subcommands())]
    )
    print("\n".join(problems) or "no problems")
    sys.exit(1 if problems else 0)
