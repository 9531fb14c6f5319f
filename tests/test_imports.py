"""Import hygiene, in fresh interpreters: pure layers load no I/O stack or torch; commands without a model no torch."""

from __future__ import annotations

import json
import subprocess
import sys

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
