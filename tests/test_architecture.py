"""The import-layer contract of ``codegeex_ms`` (see ARCHITECTURE.md), checked on the source AST.

Every import is counted, including those inside functions (a lazy import is still an arrow).
Three rules:

1. Nothing imports a command module (a module that parses arguments and is run as
   ``python -m codegeex_ms.<verb>``); commands sit on top and call the library.
2. A library module imports only modules of its own layer or of layers below it.
3. Commands are modules at the package root or ``__main__`` modules of subpackages; the root
   holds nothing but commands, ``config.py`` and the package ``__init__``.

Known violations are listed by name below, each a refactoring still to do (issue 14). The test
fails on any new violation, and also when a listed one has gone, so that the list only shrinks:
remove the entry when its refactoring lands.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = "codegeex_ms"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

# Layers, lowest first: a library module may import its own layer and the layers below. A
# component is a subpackage or a module at the package root.
LAYERS = (
    ("config", "env"),                              # foundation: settings, data paths, MindSpore
    ("checkpoint",),                                # tensors on disk: formats, names, layouts
    ("ops",),                                       # kernels and fused operators
    ("model", "lora"),                              # the network, its adapters
    ("data", "parallel", "budget"),                 # tokenizer, datasets; parallel plan; budgets
    ("train", "inference"),                         # training loop; decoding
    ("humaneval", "serve", "cli"),                  # evaluation harness; HTTP server; CLI flags
)

# Modules run as ``python -m codegeex_ms.<verb>`` (or by a script): they parse arguments.
COMMANDS = {
    "convert", "distributed_ckpt", "dryrun", "evaluate", "generate", "plan", "preprocess",
    "quantize", "score", "tokenizer_train",
    "build_kernels", "lora.__main__", "serve.__main__", "train.__main__",
}

# Scripts that are not commands: copied into a sandboxed sample directory and run there.
SANDBOX_SCRIPTS = {"humaneval.python_driver"}

# Known violations of rule 1: (importer, imported command).
KNOWN_COMMAND_IMPORTS = set()

# Known violations of rule 2: (importer, imported) across layers, upwards.
KNOWN_LAYER_IMPORTS = set()

# Known violations of rule 3.
KNOWN_ROOT_LIBRARY_MODULES = set()
KNOWN_COMMANDS_INSIDE_LIBRARY = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict:
    """{module name relative to the package ('' for the package itself): path}."""
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


MODULES = _modules()


def _is_package(name: str) -> bool:
    return (ROOT.joinpath(*name.split(".")) / "__init__.py").exists() if name else True


def _resolve(importer: str, node) -> list:
    """Package-relative names of the codegeex_ms modules an import statement reaches."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
        return [n[len(PACKAGE) + 1:] if n != PACKAGE else "" for n in names
                if n == PACKAGE or n.startswith(PACKAGE + ".")]
    if node.level:
        base = importer.split(".") if importer else []
        if not _is_package(importer) or MODULES.get(importer, Path()).name != "__init__.py":
            base = base[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    elif node.module == PACKAGE or (node.module or "").startswith(PACKAGE + "."):
        target = node.module[len(PACKAGE) + 1:] if node.module != PACKAGE else ""
    else:
        return []
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}" if target else alias.name
        out.append(sub if sub in MODULES else target)
    return out


def _imports() -> set:
    """{(importer, imported)} over every module, lazy imports included, self-imports left out."""
    edges = set()
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update((name, t) for t in _resolve(name, node) if t != name)
    return edges


IMPORTS = _imports()


def _component(module: str) -> str:
    return module.split(".")[0]


def _layer(module: str) -> int:
    for i, names in enumerate(LAYERS):
        if _component(module) in names:
            return i
    raise KeyError(module)


def _parses_arguments(path: Path) -> bool:
    text = path.read_text(encoding="utf-8")
    return "ArgumentParser" in text and 'if __name__ == "__main__"' in text


def test_every_command_is_a_command_and_every_command_is_listed():
    listed = {m for m in COMMANDS if not _parses_arguments(MODULES[m])}
    assert not listed, f"listed as commands but parse no arguments or are not runnable: {listed}"
    runnable = {m for m, p in MODULES.items()
                if 'if __name__ == "__main__"' in p.read_text(encoding="utf-8")}
    assert runnable - COMMANDS - SANDBOX_SCRIPTS == set(), (
        f"runnable modules missing from COMMANDS (add them there): "
        f"{runnable - COMMANDS - SANDBOX_SCRIPTS}")


def test_sandbox_scripts_import_nothing_from_the_package():
    """They run inside the sandbox with only the sample directory: stdlib imports only."""
    for script in SANDBOX_SCRIPTS:
        reached = {b for a, b in IMPORTS if a == script}
        assert reached == set(), f"{script} imports {reached}"
        assert not _parses_arguments(MODULES[script]), f"{script} is a command: list it in COMMANDS"


def test_every_component_has_a_layer():
    library = {_component(m) for m in MODULES if m and m not in COMMANDS}
    missing = sorted(c for c in library if not any(c in names for names in LAYERS))
    assert not missing, f"components without a layer in LAYERS (and ARCHITECTURE.md): {missing}"
    commands_in_layers = sorted(c for names in LAYERS for c in names if c in COMMANDS)
    assert not commands_in_layers, f"commands placed in a layer: {commands_in_layers}"


def test_nothing_imports_a_command():
    found = {(a, b) for a, b in IMPORTS if b in COMMANDS}
    new = sorted(found - KNOWN_COMMAND_IMPORTS)
    assert not new, f"imports of command modules (move the code into the library): {new}"
    gone = sorted(KNOWN_COMMAND_IMPORTS - found)
    assert not gone, f"fixed, remove from KNOWN_COMMAND_IMPORTS: {gone}"


def test_library_imports_only_its_layer_and_below():
    found = set()
    for a, b in IMPORTS:
        if a in COMMANDS or b in COMMANDS or not a or not b:
            continue
        if _layer(b) > _layer(a):
            found.add((a, b))
    new = sorted(found - KNOWN_LAYER_IMPORTS)
    assert not new, f"imports reaching up a layer (see ARCHITECTURE.md): {new}"
    gone = sorted(KNOWN_LAYER_IMPORTS - found)
    assert not gone, f"fixed, remove from KNOWN_LAYER_IMPORTS: {gone}"


def test_package_root_holds_commands_and_config_only():
    root = {m for m in MODULES if m and "." not in m and not _is_package(m)}
    library = root - COMMANDS - {"config"}
    new = sorted(library - KNOWN_ROOT_LIBRARY_MODULES)
    assert not new, f"library modules at the package root (move them into a package): {new}"
    gone = sorted(KNOWN_ROOT_LIBRARY_MODULES - library)
    assert not gone, f"moved, remove from KNOWN_ROOT_LIBRARY_MODULES: {gone}"
    nested = {m for m in COMMANDS if "." in m and not m.endswith(".__main__")}
    assert nested - KNOWN_COMMANDS_INSIDE_LIBRARY == set(), (
        f"commands inside library packages: {nested - KNOWN_COMMANDS_INSIDE_LIBRARY}")
    gone = sorted(KNOWN_COMMANDS_INSIDE_LIBRARY - nested)
    assert not gone, f"moved, remove from KNOWN_COMMANDS_INSIDE_LIBRARY: {gone}"


@pytest.mark.parametrize("importer, source, expected", [
    ("humaneval.steps", "from .problems import Track", ["humaneval.problems"]),
    ("humaneval", "from .scoring import pass_at_k", ["humaneval.scoring"]),
    ("serve.__main__", "from codegeex_ms import generate", ["generate"]),
    ("model.build", "from ..quantize import load_int8", ["quantize"]),
    ("evaluate", "from .humaneval import scoring", ["humaneval.scoring"]),
    ("evaluate", "import numpy", []),
])
def test_resolver(importer, source, expected):
    """The import resolver the rules stand on: relative, absolute and submodule imports."""
    node = ast.parse(source).body[0]
    assert _resolve(importer, node) == expected
