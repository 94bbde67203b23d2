"""The package's shape: imports point one way (no cycle among our modules, and none hidden in a function,
where it would only move the cycle from import time to call time), the core never imports the lab, functions
stay short enough to read at once, and the model file stays the size of the official MAE's."""
import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "mixedae_core"
LAB = "mixedae_core.lab"
# `python -m mixedae_core` is the lab's command line: its entry point is the one place outside the lab that
# names it
ENTRY_POINT = "mixedae_core.__main__"
LONGEST_FUNCTION = 60
MODEL_FILE_LINES = 450  # models_mae.py's scale: the model, not its configuration or training


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, ours: set[str]) -> list[str]:
    """The modules of `ours` an import statement in `module` loads (`from pkg import sub` loads pkg.sub)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in ours]
    base = module if is_package else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    target = ".".join(p for p in (base if node.level else "", node.module or "") if p)
    found = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in ours]
    return found + ([target] if target in ours and len(found) < len(node.names) else [])


def import_graph(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """({module: the modules of the package it imports at import time}, ['module:line function imports x'] for
    every import of the package's own modules inside a function)."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph, in_functions = {name: set() for name in files}, []
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f) if n is not f}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets = imported_modules(node, name, is_package, set(files))
            if id(node) in nested:
                in_functions += [f"{name}:{node.lineno} imports {t} inside a function" for t in targets]
            else:
                graph[name].update(targets)
    return graph, in_functions


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each module that lies on one (depth-first search, so each is reported once)."""
    found, done, path = [], set(), []

    def visit(module):
        if module in path:
            found.append(path[path.index(module):] + [module])
            return
        if module in done:
            return
        path.append(module)
        for target in sorted(graph[module]):
            visit(target)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    return found


def test_the_package_imports_point_one_way_and_none_hides_in_a_function():
    graph, in_functions = import_graph(PACKAGE)
    assert len(graph) > 20 and graph["mixedae_core.lab.cli"]  # the graph was read
    assert not cycles(graph), cycles(graph)
    assert not in_functions, in_functions


def test_the_core_never_imports_the_lab():
    graph, _ = import_graph(PACKAGE)
    core = {m: {t for t in targets if t == LAB or t.startswith(LAB + ".")} for m, targets in graph.items()
            if m != ENTRY_POINT and not (m == LAB or m.startswith(LAB + "."))}
    assert not {m: t for m, t in core.items() if t}


def test_the_checks_catch_a_cycle_and_an_import_hidden_in_a_function(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub import b\n")
    (package / "sub" / "b.py").write_text("import os\n\n\ndef f():\n    from ..a import x\n    return x\n")
    (package / "c.py").write_text("from pkg.sub.b import f\nfrom . import a\n")
    graph, in_functions = import_graph(package)
    assert graph == {"pkg": set(), "pkg.sub": set(), "pkg.a": {"pkg.sub.b"}, "pkg.sub.b": set(),
                     "pkg.c": {"pkg.sub.b", "pkg.a"}}
    assert in_functions == ["pkg.sub.b:5 imports pkg.a inside a function"]
    (package / "sub" / "b.py").write_text("from .. import c\n")
    assert cycles(import_graph(package)[0]) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"],
                                                ["pkg.sub.b", "pkg.c", "pkg.sub.b"]]


def test_no_function_is_longer_than_a_screen():
    long = [f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in sorted(PACKAGE.rglob("*.py")) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > LONGEST_FUNCTION]
    assert not long


def test_the_model_file_reads_like_the_official_maes():
    """The model classes and the steps a reader of models_mae.py looks for, with the config elsewhere."""
    source = (PACKAGE / "model.py").read_text()
    classes = {n.name: n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)}
    steps = {f.name for f in classes["MaskedAutoencoderViT"].body if isinstance(f, ast.FunctionDef)}
    assert len(source.splitlines()) < MODEL_FILE_LINES and "ModelConfig" not in classes
    assert {"forward_encoder", "forward_decoder", "forward_loss", "forward"} <= steps
    assert [ast.unparse(b) for b in classes["MixedAutoencoderViT"].bases] == ["MaskedAutoencoderViT"]
