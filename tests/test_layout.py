"""The package's shape, read from the source with `ast` (nothing of r1vflow is imported).

- no import cycle among r1vflow modules (src/r1vflow/**, components/*.py as
  r1vflow.components.X, pipelines/*.py as r1vflow.pipelines.X), counting every import statement,
  in functions too;
- no import from a higher layer: `LAYERS` below orders the packages (docs/architecture.md draws
  the same rows, tests/test_docs.py checks that it does); a module imports its own layer and the
  ones beneath, and every package must have a layer;
- no module over 600 lines;
- at most six modules loose at the top of src/r1vflow/ (the rest live in the subpackages);
- components/*.py import nothing of r1vflow at module level but r1vflow.runtime.images: they are
  KFP decorators only, their bodies import the runtime when the task runs.

Each check is a function of the repository root, so the tests below also run it on a small
synthetic tree that breaks it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from servers import write_tree

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 600
MAX_LOOSE_MODULES = 6
COMPONENT_MODULE_LEVEL_ALLOWED = {"r1vflow.runtime.images"}

# The layers, bottom first: a module of r1vflow.<package> may import its own layer and the
# layers below it, never one above. Packages that import each other share a row (data reads the
# benchmarks for its contamination check, eval grades data's records; models.generate drives the
# generation engines, which run models).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("config",),
    ("storage",),
    ("data", "models", "generation", "eval"),
    ("train",),
    ("rl",),
    ("pref",),
    ("reports",),
    ("tracking",),
    ("stages",),
    ("runtime",),
    ("components", "pipelines"),
    ("gitops", "cli", "bench"),
)

# directory (relative to the root) -> the package name its files have (pyproject's package-dir)
TREES = {"src/r1vflow": "r1vflow", "components": "r1vflow.components",
         "pipelines": "r1vflow.pipelines"}


# --------------------------------------------------------------------------- the checker


def modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for every .py file of the three trees (src/r1vflow recursively;
    components and pipelines are flat packages: their direct files only)."""
    found: dict[str, Path] = {}
    for rel, package in TREES.items():
        base = root / rel
        if not base.is_dir():
            continue
        files = base.rglob("*.py") if rel == "src/r1vflow" else base.glob("*.py")
        for path in sorted(files):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute name of `from <...> import` (relative imports resolved against module)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _known(name: str, known: set[str]) -> str | None:
    """The longest prefix of a dotted name that is a module of ours (None: not ours)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def _walk(tree: ast.AST, module_level_only: bool):
    """Every node; with module_level_only, not inside function bodies (they run later)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if module_level_only and isinstance(
                    child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            stack.append(child)


def imports_of(path: Path, module: str, known: set[str],
               module_level_only: bool = False) -> set[str]:
    """The modules of ours that `path` (module `module`) imports. `from pkg import name` is an
    edge to pkg.name when that is a module, else to pkg."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in _walk(tree, module_level_only):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(node, module, is_package)
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                     for alias in node.names]
        else:
            continue
        for name in names:
            target = _known(name, known)
            if target is not None and target != module:
                targets.add(target)
    return targets


def import_graph(root: Path) -> dict[str, set[str]]:
    found = modules(root)
    known = set(found)
    return {name: imports_of(path, name, known) for name, path in found.items()}


def layer_of(module: str, layers=LAYERS) -> int | None:
    """The row of `layers` that r1vflow.<package>[.rest] belongs to (None: the bare `r1vflow`
    package, which sits above everything); KeyError names a package without a row."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    for index, row in enumerate(layers):
        if parts[1] in row:
            return index
    raise KeyError(f"r1vflow.{parts[1]} has no layer: add it to LAYERS in tests/test_layout.py "
                   "and to the drawing in docs/architecture.md")


def upward_imports(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """'importer -> imported (layer a < layer b)' for every import of a higher layer."""
    found = []
    for module in sorted(graph):
        below = layer_of(module, layers)
        if below is None:
            continue
        for target in sorted(graph[module]):
            above = layer_of(target, layers)
            if above is not None and above > below:
                found.append(f"{module} -> {target} (layer {below} imports layer {above})")
    return found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> ... -> a) per strongly connected component with more than one module
    (Tarjan's algorithm, then a shortest path back to the component's first module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)

    cycles = []
    for component in components:
        members, start = set(component), component[0]
        # breadth-first from start, inside the component, until an edge leads back to start
        previous: dict[str, str] = {}
        frontier, last = [start], None
        while last is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph.get(v, ())):
                    if w == start and last is None:
                        last = v
                    elif w in members and w != start and w not in previous:
                        previous[w] = v
                        nxt.append(w)
            frontier = nxt
        path = [last]
        while path[-1] != start:
            path.append(previous[path[-1]])
        cycles.append([*reversed(path), start])
    return cycles


def long_modules(root: Path, limit: int = MAX_LINES) -> dict[str, int]:
    result = {}
    for name, path in modules(root).items():
        lines = len(path.read_text().splitlines())
        if lines > limit:
            result[name] = lines
    return result


def loose_modules(root: Path) -> list[str]:
    """Modules directly in src/r1vflow/ (its __init__.py, the package itself, not counted)."""
    return sorted(p.name for p in (root / "src/r1vflow").glob("*.py") if p.name != "__init__.py")


def component_module_level_imports(root: Path) -> dict[str, set[str]]:
    """components/*.py -> the r1vflow modules they import at module level beyond the allowed."""
    found = modules(root)
    known = set(found)
    bad = {}
    for path in sorted((root / "components").glob("*.py")):
        name = next(n for n, p in found.items() if p == path)
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        imported: set[str] = set()
        for node in _walk(tree, module_level_only=True):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = _resolve_from(node, name, is_package)
                imported |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                             for a in node.names}
        ours = {i for i in imported if i == "r1vflow" or i.startswith("r1vflow.")}
        extra = ours - COMPONENT_MODULE_LEVEL_ALLOWED
        if extra:
            bad[path.name] = extra
    return bad


# --------------------------------------------------------------------------- the repository


def _show_cycles(cycles: list[list[str]]) -> str:
    return "\n".join(" -> ".join(c) for c in cycles)


def test_no_import_cycle():
    graph = import_graph(ROOT)
    assert "r1vflow.config.stage_table" in graph and "r1vflow.components.sft" in graph
    cycles = find_cycles(graph)
    assert not cycles, f"import cycles among r1vflow modules:\n{_show_cycles(cycles)}"


def test_no_import_from_a_higher_layer():
    graph = import_graph(ROOT)
    packages = {m.split(".")[1] for m in graph if m.count(".") >= 1}
    assert packages == {p for row in LAYERS for p in row}, (
        "LAYERS names packages that are not there, or misses some")
    upward = upward_imports(graph)
    assert not upward, ("imports that point up the layers (move the function down a layer or "
                        "pass it in; docs/architecture.md):\n" + "\n".join(upward))


def test_no_module_over_600_lines():
    long = long_modules(ROOT)
    assert not long, f"modules over {MAX_LINES} lines (split them): {long}"


def test_few_loose_modules_at_the_top():
    loose = loose_modules(ROOT)
    assert len(loose) <= MAX_LOOSE_MODULES, (
        f"{len(loose)} modules directly in src/r1vflow/ (at most {MAX_LOOSE_MODULES}; put them "
        f"in a subpackage, docs/architecture.md): {loose}")


def test_components_import_only_images_at_module_level():
    bad = component_module_level_imports(ROOT)
    assert not bad, ("components/*.py may import only r1vflow.runtime.images at module level "
                     f"(import the rest inside the component function): {bad}")


# --------------------------------------------------------------------------- the checker itself


def _tree(root: Path, files: dict[str, str]) -> Path:
    return write_tree(root, {rel: text.encode() for rel, text in files.items()})


def test_checker_finds_a_cycle_through_a_function_and_relative_imports(tmp_path):
    root = _tree(tmp_path, {
        "src/r1vflow/__init__.py": "",
        "src/r1vflow/a/__init__.py": "from . import x\n",       # edge to r1vflow.a.x (a module)
        "src/r1vflow/a/x.py": "from r1vflow.b import thing\n",  # edge to r1vflow.b (a name)
        "src/r1vflow/b/__init__.py": "def thing():\n    from ..a import x\n    import r1vflow.b\n",
        "src/r1vflow/c.py": "import r1vflow.a.x\n",             # into the cycle, not part of it
        "components/__init__.py": "",
        "components/sft.py": "from r1vflow.runtime.images import image_for\n",
    })
    graph = import_graph(root)
    assert graph["r1vflow.a"] == {"r1vflow.a.x"}
    assert graph["r1vflow.a.x"] == {"r1vflow.b"}
    assert graph["r1vflow.b"] == {"r1vflow.a.x"}  # the self-import is ignored
    assert find_cycles(graph) == [["r1vflow.a.x", "r1vflow.b", "r1vflow.a.x"]]
    # a cycle through components and pipelines, with their package names
    _tree(root, {"pipelines/__init__.py": "",
                 "pipelines/dag.py": "from r1vflow.components import sft\n",
                 "components/sft.py": "def f():\n    from r1vflow.pipelines.dag import g\n"})
    cycles = find_cycles(import_graph(root))
    assert ["r1vflow.components.sft", "r1vflow.pipelines.dag",
            "r1vflow.components.sft"] in cycles


def test_checker_finds_imports_from_a_higher_layer(tmp_path):
    # the two upward imports of issue 21, were they back: one at module level, one in a function
    root = _tree(tmp_path, {
        "src/r1vflow/__init__.py": "",
        "src/r1vflow/runtime/__init__.py": "",
        "src/r1vflow/runtime/cluster.py": "",
        "src/r1vflow/train/__init__.py": "",
        "src/r1vflow/train/engine.py": "from r1vflow.models.distributed import rank_world\n",
        "src/r1vflow/train/checkpoint.py": "from r1vflow.runtime.cluster import scratch_root\n",
        "src/r1vflow/models/__init__.py": "",
        "src/r1vflow/models/distributed.py": "",
        "src/r1vflow/models/io.py": ("from r1vflow.models import distributed\n"
                                     "def load():\n    from ..train.engine import zero3_init\n"),
        "src/r1vflow/generation/__init__.py": "from r1vflow.models import io\n",
        "src/r1vflow/models/generate.py": "import r1vflow.generation\n",  # same layer: allowed
    })
    assert upward_imports(import_graph(root)) == [
        "r1vflow.models.io -> r1vflow.train.engine (layer 2 imports layer 3)",
        "r1vflow.train.checkpoint -> r1vflow.runtime.cluster (layer 3 imports layer 9)"]
    assert layer_of("r1vflow") is None and layer_of("r1vflow.pipelines.dag") == 10
    with pytest.raises(KeyError, match="r1vflow.newpkg has no layer"):
        upward_imports({"r1vflow.newpkg.x": {"r1vflow.config"}})


def test_checker_finds_a_longer_cycle(tmp_path):
    graph = {"p": {"q"}, "q": {"r", "s"}, "r": {"p"}, "s": set(), "t": {"t"}}
    assert find_cycles(graph) == [["p", "q", "r", "p"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_checker_finds_long_and_loose_modules(tmp_path):
    files = {"src/r1vflow/__init__.py": "", "src/r1vflow/big/__init__.py": "x = 1\n" * 601,
             "components/ok.py": "x = 1\n" * 600}
    files |= {f"src/r1vflow/m{i}.py": "" for i in range(MAX_LOOSE_MODULES + 1)}
    root = _tree(tmp_path, files)
    assert long_modules(root) == {"r1vflow.big": 601}
    assert len(loose_modules(root)) == MAX_LOOSE_MODULES + 1


def test_checker_finds_component_imports_at_module_level(tmp_path):
    root = _tree(tmp_path, {
        "src/r1vflow/__init__.py": "",
        "src/r1vflow/runtime/__init__.py": "",
        "src/r1vflow/runtime/images.py": "",
        "src/r1vflow/config/__init__.py": "",
        "components/__init__.py": "",
        "components/good.py": ("from kfp import dsl\nfrom r1vflow.runtime.images import image_for\n"
                               "from r1vflow.runtime import images\n"
                               "def f():\n    from r1vflow.config import Experiment\n"),
        "components/bad.py": "if True:\n    from r1vflow.config import Experiment\n",
        "components/worse.py": "import r1vflow.runtime\nfrom . import good\n",
    })
    assert component_module_level_imports(root) == {
        "bad.py": {"r1vflow.config"},
        "worse.py": {"r1vflow.runtime", "r1vflow.components.good"}}
