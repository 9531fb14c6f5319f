"""Import hygiene: pure layers load no I/O stack or torch (in fresh interpreters) and read no clock, socket or
global randomness (in their source); commands without a model load no torch."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "aiohttp", "zeroconf", "asyncio")
PURE = (
    "ccied_p2p.codec",
    "ccied_p2p.codec.wire",
    "ccied_p2p.codec.layouts",
    "ccied_p2p.codec.auth",
    "ccied_p2p.codec.session",
    "ccied_p2p.gossip",
    "ccied_p2p.gossip.membership",
    "ccied_p2p.gossip.config",
    "ccied_p2p.gossip.dissemination",
    "ccied_p2p.cache",
    "ccied_p2p.scheduler",
    "ccied_p2p.strategy",
    "ccied_p2p.planner",
    "ccied_p2p.profile",
    "ccied_p2p.workloads",
    "ccied_p2p.errors",
)
# Read by tests with their own pure model of something (the relay's link model).
PURE_SOURCES = (*PURE, "ccied_p2p.testing.linkmodel")
# Time, sockets, threads and processes come in as arguments or not at all; randomness only as an injected
# generator (``random.Random`` as a type), so every run of a pure layer is reproducible.
NO_IMPORT = {"time", "datetime", "socket", "selectors", "threading", "subprocess", "pickle", *HEAVY}
# The package itself and the commands that need no model (``status``, ``dashboard``) must not pay for torch.
NO_TORCH = ("ccied_p2p", "ccied_p2p.cli", "ccied_p2p.observe_cli")


def _loaded(module: str) -> list[str]:
    code = f"import sys, json, {module}; print(json.dumps(sorted(m for m in sys.modules if '.' not in m)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded: list[str] = json.loads(out)
    return loaded


@pytest.mark.parametrize("module", PURE)
def test_pure_layers_import_no_io_stack_and_no_torch(module: str) -> None:
    assert not set(_loaded(module)) & set(HEAVY), module


@pytest.mark.parametrize("module", NO_TORCH)
def test_package_and_model_free_commands_do_not_import_torch(module: str) -> None:
    assert "torch" not in _loaded(module)


def test_lazy_package_still_exposes_the_public_api() -> None:
    code = "import ccied_p2p as c; print(c.Node.__name__, c.SplitModel.__name__, c.models.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["Node", "SplitModel", "ccied_p2p.models"]


def _sources(module: str) -> list[Path]:
    spec = importlib.util.find_spec(module)
    assert spec is not None
    assert spec.origin is not None
    origin = Path(spec.origin)
    return sorted(origin.parent.glob("*.py")) if origin.name == "__init__.py" else [origin]


@pytest.mark.parametrize("module", PURE_SOURCES)
def test_pure_layers_read_no_clock_socket_or_global_randomness(module: str) -> None:
    for path in _sources(module):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
                assert node.module.split(".")[0] != "random", f"{path.name}: from random import ..."
            for name in names:
                assert name.split(".")[0] not in NO_IMPORT, f"{path.name} imports {name}"
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "random"
            ):
                assert node.attr == "Random", f"{path.name}: random.{node.attr} (inject a generator)"


def test_the_purity_check_finds_a_clock_and_global_randomness(tmp_path: Path) -> None:
    """The check above on a module that reads the clock and the global generator."""
    bad = tmp_path / "bad_pure_module.py"
    bad.write_text("import random\nrng = random.Random(0)\nx = random.random()\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(AssertionError, match=r"random\.random"):
            test_pure_layers_read_no_clock_socket_or_global_randomness("bad_pure_module")
        bad.write_text("from time import monotonic\n")
        with pytest.raises(AssertionError, match="imports time"):
            test_pure_layers_read_no_clock_socket_or_global_randomness("bad_pure_module")
    finally:
        sys.path.remove(str(tmp_path))
