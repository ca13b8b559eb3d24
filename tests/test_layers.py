"""The layers of tunnel/ import only downward, so the picture in
docs/internals.md stays true: the sans-IO protocol and core never reach the OS
edge, the planes, the control plane or the lab."""

import ast
import importlib
from pathlib import Path

from tunnel.core import API

from .conftest import ROOT

PACKAGE = ROOT / "tunnel"

# What each layer may import from tunnel/, besides itself.
ALLOWED = {
    "protocol": set(),
    "core": {"protocol"},
    "host": {"protocol"},
    "planes": {"protocol", "core", "host"},
    "control": {"protocol", "core", "host", "planes"},
    "fleet": {"protocol", "core", "host", "planes", "control"},
    "lab": {"protocol", "core", "host", "control", "fleet"},
    # cli.py, daemon.py and pyvpn_wg.py, on top.
    "top": {"protocol", "core", "host", "planes", "control", "fleet", "lab"},
}
TOP_MODULES = {"__init__", "__main__", "cli", "daemon", "pyvpn_wg"}


def layer_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else "top"


def imported_layers(path: Path, source: str | None = None) -> set[str]:
    """The layers of tunnel/ a module imports, however the import is spelled."""
    layers = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = path.parent.relative_to(PACKAGE.parent).parts
                parts = [*base[: len(base) - node.level + 1], *(node.module or "").split(".")]
                names = [".".join(p for p in parts if p)]
            else:
                names = [node.module or ""]
            if names[0] == "tunnel":
                names = [f"tunnel.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "tunnel" and len(parts) > 1:
                layers.add("top" if parts[1] in TOP_MODULES else parts[1])
    return layers


def test_every_module_is_in_a_known_layer() -> None:
    for path in PACKAGE.rglob("*.py"):
        layer = layer_of(path)
        assert layer in ALLOWED, f"{path}: {layer} is no layer"
        if layer == "top":
            assert path.stem in TOP_MODULES, f"{path.name} at the top of tunnel/"


def test_layers_import_only_downward() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = layer_of(path)
        for other in imported_layers(path) - {layer} - ALLOWED[layer]:
            wrong.append(f"{path.relative_to(PACKAGE)} ({layer}) imports {other}")
    assert not wrong, "\n".join(wrong)


def test_the_sans_io_layers_touch_no_io() -> None:
    """protocol/ and core/ take bytes and time and give bytes and actions: no
    sockets, clocks, event loops or netlink of their own."""
    forbidden = {"socket", "asyncio", "uvloop", "time", "select", "pyroute2", "subprocess"}
    for layer in ("protocol", "core"):
        for path in (PACKAGE / layer).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    names = {(node.module or "").split(".")[0]}
                else:
                    continue
                assert not names & forbidden, f"{path.relative_to(PACKAGE)} imports {names}"


def test_the_checker_sees_a_wrong_import() -> None:
    """imported_layers() reads every spelling of an import, so the test above can fail."""
    module = PACKAGE / "protocol" / "probe.py"
    source = "from ..host import udp\nfrom tunnel.lab import testbed\nimport tunnel.cli\n"
    assert imported_layers(module, source) == {"host", "lab", "top"}
    assert imported_layers(module, "from . import keys\nfrom tunnel import planes\n") == {
        "protocol",
        "planes",
    }


CORE = PACKAGE / "core"


def _core_modules() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text())) for path in sorted(CORE.glob("*.py"))]


def test_the_core_is_functions_over_a_state_not_a_class_chain() -> None:
    """No class of core/ extends another: send, receive and ticks act on a State
    they are given, so a reader sees where each step lives."""
    classes = {
        node.name
        for _, tree in _core_modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
    }
    wrong = [
        f"{path.name}: {node.name}({ast.unparse(base)})"
        for path, tree in _core_modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        for base in node.bases
        if isinstance(base, ast.Name) and base.id in classes
    ]
    assert not wrong, "\n".join(wrong)


def test_core_modules_use_each_other_only_through_the_listed_api() -> None:
    """What one module of core/ takes from another is in that module's list in
    core/__init__.py, and no private name crosses a module."""
    for module, names in API.items():
        loaded = importlib.import_module(f"tunnel.core.{module}")
        missing = [n for n in names if not hasattr(loaded, n)]
        assert not missing, f"core/__init__.py lists {missing}, which {module}.py lacks"
    wrong = []
    for path, tree in _core_modules():
        siblings = set()  # modules bound by `from . import x`, whose `x.name` counts too
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level != 1:
                continue
            if node.module is None:
                siblings |= {a.asname or a.name for a in node.names if a.name in API}
                continue
            for alias in node.names:
                if _private(alias.name) or alias.name not in API.get(node.module, (alias.name,)):
                    wrong.append(f"{path.name} imports {node.module}.{alias.name}")
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if owner in ("self", "cls"):
                continue
            if _private(node.attr) or (owner in siblings and node.attr not in API[owner]):
                wrong.append(f"{path.name}:{node.lineno} uses {ast.unparse(node)}")
    assert not wrong, "\n".join(wrong)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")
