"""ccied_p2p: cache-aided collaborative DNN inference between edge devices (after CCIED, IEEE HPCC 2020).

Modules, pure layers first:

- :mod:`ccied_p2p.datasets`  real image data sets, offline (Fashion-MNIST, MNIST-5k, digits)
- :mod:`ccied_p2p.models`    reference models (LeNet-, VGG-style), trained once and cached; EfficientNet-Lite0
- :mod:`ccied_p2p.split`     :class:`SplitModel`: cut any traceable model into head and tail; profile; fingerprint
- :mod:`ccied_p2p.pruning`   :func:`prune_split_layer`: prune only the layer producing the split activation
- :mod:`ccied_p2p.codec`     the wire format: messages, frames, sparse tensor encodings, lz4, encrypted sessions (pure)
- :mod:`ccied_p2p.cache`     :class:`SemanticCache`: kNN vote over usearch / numpy, calibration, eviction (pure)
- :mod:`ccied_p2p.workloads` seeded camera, control and non-IID request streams over real images (pure)
- :mod:`ccied_p2p.gossip`    SWIM membership with suspicion, and its simulation (pure)
- :mod:`ccied_p2p.scheduler` where a tail runs: estimates and failover order (pure)
- :mod:`ccied_p2p.strategy`  per request: cache, local, offload or split, from measured costs (pure)
- :mod:`ccied_p2p.runtime`   asyncio: authenticated WebSocket links, mDNS discovery, the :class:`Node`
- :mod:`ccied_p2p.presets`   a pruned reference split and a calibrated cache, ready to run
- :mod:`ccied_p2p.errors`    the exception tree (one root, :class:`CCIEDError`)
- :mod:`ccied_p2p.cli`       the ``ccied-p2p`` command (train, profile, prune, serve, infer, demo, bench)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ccied_p2p import datasets, models
    from ccied_p2p.cache import SemanticCache
    from ccied_p2p.errors import CCIEDError
    from ccied_p2p.pruning import prune_split_layer
    from ccied_p2p.runtime.node import InferenceResult, Node, NodeConfig
    from ccied_p2p.split import SplitModel

__all__ = [
    "CCIEDError",
    "InferenceResult",
    "Node",
    "NodeConfig",
    "SemanticCache",
    "SplitModel",
    "datasets",
    "models",
    "prune_split_layer",
]
__version__ = "0.1.0"

# PEP 562: ``import ccied_p2p`` stays cheap (no torch, aiohttp or usearch) until a name is touched, so commands
# that need no model (``status``, ``dashboard``) and the pure layers start fast.
_LAZY: dict[str, str] = {
    "CCIEDError": "ccied_p2p.errors",
    "InferenceResult": "ccied_p2p.runtime.node",
    "Node": "ccied_p2p.runtime.node",
    "NodeConfig": "ccied_p2p.runtime.node",
    "SemanticCache": "ccied_p2p.cache",
    "SplitModel": "ccied_p2p.split",
    "prune_split_layer": "ccied_p2p.pruning",
}


def __getattr__(name: str) -> Any:
    if name in ("datasets", "models"):
        return importlib.import_module(f"ccied_p2p.{name}")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
