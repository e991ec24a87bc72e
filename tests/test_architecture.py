"""Architecture checks over the source of ``w2vtools``, read with ``ast`` (nothing is imported).

* no import cycles among ``w2vtools`` modules (imports at the top of a file and
  inside functions alike, and ``importlib.import_module("w2vtools....")`` strings);
* dependencies point one way, from the lower layers of :data:`LAYERS` to the higher;
* no function outside ``w2vtools/cli/`` and ``w2vtools/models/`` (model maths is
  exempt) has more than :data:`MAX_FUNCTION_LINES` lines of code (docstring, blank
  and comment lines not counted).

A new module must be placed in :data:`LAYERS` (the test says so, naming it).

Example:
    $ python -m pytest -q tests/test_architecture.py
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "w2vtools"

# Layer of every module, lowest first: a module may import its own layer and lower ones.
# A key ending in ".*" covers a package's modules (its __init__ included); an exact key wins.
LAYERS: dict[str, int] = {
    # formats: files on disk, errors, and the package's version
    "w2vtools": 0,
    "w2vtools.errors": 0,
    "w2vtools.fileio": 0,
    "w2vtools.formats.*": 0,
    "w2vtools.stack": 0,  # what is installed (w2v doctor); asked by the CLI's error handler
    # audio: reading and batching waveforms
    "w2vtools.audio": 1,
    "w2vtools.batching": 1,
    "w2vtools.augment": 1,  # speed perturbation and noise of training audio
    # models: nn.Modules, their configs, loading and conversion
    "w2vtools.models.*": 2,
    # train / running: the update loop, emissions, process-wide tuning
    "w2vtools.train.*": 3,
    "w2vtools.emissions": 3,
    "w2vtools.encoders": 3,
    "w2vtools.malloc": 3,
    "w2vtools.threads": 3,  # default thread count of a command
    "w2vtools.autocast": 3,  # whether bf16 autocast pays on this CPU (--amp, run.amp=bf16)
    "w2vtools.runner": 3,  # a model over a corpus: batches, windows, streams (featurize, quantize, decode, align)
    # commands: one module per `w2v` subcommand
    "w2vtools.manifest": 4,
    "w2vtools.featurize": 4,
    "w2vtools.quantize": 4,
    "w2vtools.pretrain": 4,
    "w2vtools.finetune": 4,
    "w2vtools.decode": 4,
    "w2vtools.lm": 4,
    "w2vtools.score": 4,
    "w2vtools.plot": 4,
    "w2vtools.align": 4,
    "w2vtools.tune": 4,
    "w2vtools.neural_lm": 4,  # Transformer LMs: training (w2v lm --neural), perplexity, sentence scores
    "w2vtools.rescore": 4,  # n-best rescoring (w2v decode --rescore)
    # cli: the click layer (the only place with lazy imports)
    "w2vtools.cli.*": 5,
    "w2vtools.__main__": 5,
}
LAYER_NAMES = ["formats", "audio", "models", "train/running", "commands", "cli"]

# Folders whose functions are exempt from the length rule (model maths; click option lists).
LENGTH_EXEMPT = ("w2vtools/cli/", "w2vtools/models/")
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    """``w2vtools/formats/kaldi.py`` -> ``w2vtools.formats.kaldi``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int | None:
    if module in LAYERS:
        return LAYERS[module]
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        key = ".".join(parts[:i]) + ".*"
        if key in LAYERS:
            return LAYERS[key]
    return None


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of the dotted ``name`` that is one of our modules."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """``{imported w2vtools module: first line}`` for every import in the file, at any depth.

    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module,
    else ``pkg``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: dict[str, int] = {}

    def add(name: str | None, line: int) -> None:
        target = _resolve(name, modules) if name else None
        if target is not None and target != module:
            found.setdefault(target, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(full if full in modules else base, node.lineno)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called == "import_module" and isinstance(node.args[0].value, str):
                add(node.args[0].value, node.lineno)
    return found


def import_graph() -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    modules = all_modules()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}, modules


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module, each sorted (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
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
    return components


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest cycle (``[a, b, ..., a]``) per strongly connected component."""
    return [_cycle_in(component, graph) for component in strongly_connected(graph)]


def _cycle_in(component: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected component (breadth first)."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w not in members:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in previous:
                    previous[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle through {start}")


def code_lines(source: str) -> set[int]:
    """Line numbers holding code: not blank, not only a comment (a multi-line string covers all its lines)."""
    lines: set[int] = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return lines


def function_lengths(path: Path) -> list[tuple[str, int, int]]:
    """``(qualified name, first line, lines of code)`` of every function and method in a file.

    A function's lines are those of its body: its signature, docstring, blank lines
    and comment lines do not count (a nested function counts toward its parent too).
    """
    source = path.read_text(encoding="utf-8")
    code = code_lines(source)
    tree = ast.parse(source, filename=str(path))
    out: list[tuple[str, int, int]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = child.body
                if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                        and isinstance(body[0].value.value, str):
                    body = body[1:]
                lines = set(range(body[0].lineno, child.end_lineno + 1)) & code if body else set()
                out.append((prefix + child.name, child.lineno, len(lines)))
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            else:
                walk(child, prefix)

    walk(tree, "")
    return out


# ----------------------------------------------------------------------------
# The checks


def test_every_module_has_a_layer():
    unplaced = [m for m in all_modules() if layer_of(m) is None]
    assert not unplaced, (
        f"modules without a layer: {', '.join(unplaced)}; place each in LAYERS at the top of "
        f"tests/test_architecture.py ({' < '.join(LAYER_NAMES)})"
    )


def test_no_import_cycles():
    graph, _ = import_graph()
    report = [
        f"{' -> '.join(_cycle_in(component, graph))}   (modules in this cycle: {', '.join(component)})"
        for component in strongly_connected(graph)
    ]
    assert not report, "import cycles among w2vtools modules:\n" + "\n".join(report)


def test_imports_point_down_the_layers():
    graph, modules = import_graph()
    upward = []
    for module, targets in sorted(graph.items()):
        low = layer_of(module)
        for target, line in sorted(targets.items()):
            high = layer_of(target)
            if low is not None and high is not None and high > low:
                where = modules[module].relative_to(REPO)
                upward.append(
                    f"{where}:{line}: {module} ({LAYER_NAMES[low]}) imports {target} ({LAYER_NAMES[high]})"
                )
    assert not upward, f"imports from a lower layer into a higher one ({' < '.join(LAYER_NAMES)}):\n" + "\n".join(
        upward
    )


def test_functions_are_short():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(LENGTH_EXEMPT):
            continue
        for name, line, length in function_lengths(path):
            if length > MAX_FUNCTION_LINES:
                long.append(f"{rel}:{line}: {name}() has {length} lines of code")
    assert not long, (
        f"functions over {MAX_FUNCTION_LINES} lines of code (split them by job):\n" + "\n".join(long)
    )


# ----------------------------------------------------------------------------
# The checkers themselves


def test_find_cycles_names_the_cycle():
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []


def test_function_lengths_skip_docstring_comments_and_blank_lines(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        'def f(x):\n    """Doc.\n\n    More doc.\n    """\n    # a comment\n\n    y = x\n'
        '    s = """two\nlines"""\n    return y\n\n\nclass C:\n    def g(\n        self,\n    ):\n        pass\n'
    )
    assert function_lengths(source) == [("f", 1, 4), ("C.g", 15, 1)]


def test_imports_resolve_modules_and_relative_imports(tmp_path):
    modules = {"w2vtools.formats": Path(), "w2vtools.formats.kaldi": Path(), "w2vtools.audio": Path()}
    source = tmp_path / "m.py"
    source.write_text(
        "from w2vtools.formats import kaldi\n"
        "def f():\n    from . import audio\n    import importlib\n"
        "    importlib.import_module('w2vtools.formats')\n"
    )
    assert imports_of("w2vtools.decode", source, modules) == {
        "w2vtools.formats.kaldi": 1,
        "w2vtools.audio": 3,
        "w2vtools.formats": 5,
    }


@pytest.mark.parametrize(
    "module, layer",
    [("w2vtools.formats.kaldi", 0), ("w2vtools.models.ctc", 2), ("w2vtools.cli", 5), ("w2vtools.nowhere", None)],
)
def test_layer_of(module, layer):
    assert layer_of(module) == layer
