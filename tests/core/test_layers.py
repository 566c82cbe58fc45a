"""The layers point one way: the core imports neither an adapter, the backbones nor diffusers; the adapters (``webui``,
``comfy``, ``standalone``) sit side by side and never import each other; the WebUI and ComfyUI adapters import no
backbone and reach their host only through their ``shim``; nothing imports the CLI; ``errors`` is a leaf; no import
cycle."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, Set, Tuple

PACKAGE = Path(__file__).resolve().parents[2] / "i4vgen_ext"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[Tuple[str, bool]]:
    """(imported module, at top level) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                known = (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists() or \
                    (PACKAGE.parent / candidate.replace(".", "/")).is_dir()
                yield (candidate if known else base), id(node) in top


GRAPH: Dict[str, Set[Tuple[str, bool]]] = {module_name(p): set(imports(p)) for p in PACKAGE.rglob("*.py")}


def test_the_core_imports_only_itself_and_the_numeric_libraries():
    allowed_outside = ("torch", "numpy", "PIL", "__future__")
    for module, deps in GRAPH.items():
        if not module.startswith("i4vgen_ext.core"):
            continue
        for dep, _ in deps:
            if dep.startswith("i4vgen_ext"):
                assert dep.startswith(("i4vgen_ext.core", "i4vgen_ext.errors")), (module, dep)
            else:
                root = dep.split(".")[0]
                assert root in allowed_outside or root in __import__("sys").stdlib_module_names, (module, dep)


def test_the_webui_adapter_imports_no_backbone_no_cli_and_the_host_only_through_shim():
    for module, deps in GRAPH.items():
        if not module.startswith("i4vgen_ext.webui"):
            continue
        for dep, _ in deps:
            assert not dep.startswith(("i4vgen_ext.backbones", "i4vgen_ext.standalone", "diffusers")), (module, dep)
            if module != "i4vgen_ext.webui.shim":
                assert dep.split(".")[0] != "modules", (module, dep)


def test_the_adapters_sit_side_by_side():
    adapters = ("i4vgen_ext.webui", "i4vgen_ext.comfy", "i4vgen_ext.standalone")
    for module, deps in GRAPH.items():
        own = next((a for a in adapters if module.startswith(a)), None)
        for dep, _ in deps:
            other = next((a for a in adapters if dep.startswith(a)), None)
            assert other is None or other == own or module == "i4vgen_ext.__main__", (module, dep)


def test_the_error_module_is_a_leaf():
    assert all(not dep.startswith("i4vgen_ext") for dep, _ in GRAPH["i4vgen_ext.errors"])


def test_the_comfy_adapter_imports_no_backbone_no_cli_no_webui_and_the_host_only_through_shim():
    host_roots = ("comfy", "folder_paths", "nodes", "execution", "comfy_extras", "server")
    for module, deps in GRAPH.items():
        if not module.startswith("i4vgen_ext.comfy"):
            continue
        for dep, _ in deps:
            assert not dep.startswith(("i4vgen_ext.backbones", "i4vgen_ext.standalone", "i4vgen_ext.webui",
                                       "diffusers")), (module, dep)
            if module != "i4vgen_ext.comfy.shim":
                assert dep.split(".")[0] not in host_roots, (module, dep)


def test_nothing_imports_the_cli():
    for module, deps in GRAPH.items():
        if module == "i4vgen_ext.__main__":
            continue
        assert all(not dep.startswith("i4vgen_ext.standalone.cli") for dep, _ in deps), module


def test_no_import_cycle_at_module_level():
    edges = {m: {d for d, top in deps if top and d in GRAPH and d != m} for m, deps in GRAPH.items()}
    state: Dict[str, int] = {}

    def visit(node: str, path: Tuple[str, ...]) -> None:
        state[node] = 1
        for nxt in edges[node]:
            assert state.get(nxt) != 1, " -> ".join(path + (nxt,))
            if nxt not in state:
                visit(nxt, path + (nxt,))
        state[node] = 2

    for node in edges:
        if node not in state:
            visit(node, (node,))
