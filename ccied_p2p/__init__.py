"""ccied_p2p: cache-aided collaborative DNN inference between edge devices (after CCIED, IEEE HPCC 2020).

Modules, from the pure core up (the core imports no torch, asyncio, aiohttp or zeroconf: tests/test_imports.py;
no module imports another in a cycle: tests/test_layout.py):

Pure core
- :mod:`ccied_p2p.errors`    the exception tree (one root, :class:`CCIEDError`)
- :mod:`ccied_p2p.codec`     the wire format: messages, frames, sparse tensor encodings, lz4, encrypted sessions
- :mod:`ccied_p2p.cache`     :class:`SemanticCache`: kNN vote over usearch / numpy, calibration, eviction (a
  package: reducers, indexes, eviction, results, entries, calibration, persistence, the facade)
- :mod:`ccied_p2p.gossip`    SWIM membership with suspicion, and its simulation
- :mod:`ccied_p2p.scheduler` where a tail runs: estimates and failover order
- :mod:`ccied_p2p.strategy`  per request: cache, local, offload or split, from measured costs
- :mod:`ccied_p2p.planner`   the split point and encoding a device should use, from a :mod:`~ccied_p2p.profile`
- :mod:`ccied_p2p.profile`   what a split model's profile measured, per layer (plain data)
- :mod:`ccied_p2p.workloads` seeded camera, control and non-IID request streams over real images

Model layer (torch)
- :mod:`ccied_p2p.datasets`  real image data sets, offline (Fashion-MNIST, MNIST-5k, digits)
- :mod:`ccied_p2p.split`     :class:`SplitModel`: cut any traceable model into head and tail; profile; fingerprint
- :mod:`ccied_p2p.training`  train and evaluate a classifier (SGD, one-cycle, shift and camera augmentation)
- :mod:`ccied_p2p.pruning`   :func:`prune_split_layer`: prune only the layer producing the split activation
- :mod:`ccied_p2p.models`    reference models (LeNet-, VGG-style), trained once and cached; EfficientNet-Lite0
- :mod:`ccied_p2p.lite`      EfficientNet-Lite0 at 224 px: the split, its split-layer pruning and distillation
- :mod:`ccied_p2p.video`     camera-resolution inputs: real clips (PyAV), a labelled photo camera, a control
- :mod:`ccied_p2p.inputs`    how a frame becomes the model's input (:class:`InputSpec`), JPEG for offloading

Runtime (asyncio)
- :mod:`ccied_p2p.runtime`   the :class:`Node` (``node``: lifecycle, messages, gossip timer) and its parts:
  ``config`` (:class:`NodeConfig` in groups: :class:`NetworkConfig`, :class:`ConnectionLimits`,
  :class:`CacheConfig`, :class:`ServingConfig`, :class:`StrategyConfig`), ``results`` (:class:`InferenceResult`, :class:`NodeObserver`), ``compute``
  (head and batched tails on a worker thread), ``inference`` (this node's requests: cache, scheduler, frame
  strategies), ``serving`` (peers' requests: admission, refusals), ``mesh`` (links: accept, dial, one per peer);
  ``transport`` (authenticated WebSocket links), ``discovery`` (mDNS), ``guard`` (inbound connections),
  ``quota`` (CPU quotas), and :mod:`~ccied_p2p.runtime.observe` (access, metrics, status, HTTP/SSE routes)
- :mod:`ccied_p2p.logs`      logging set-up and rate-limited log lines

Tools
- :mod:`ccied_p2p.presets`   a pruned reference split and a calibrated cache, ready to run
- :mod:`ccied_p2p.camera`    a virtual camera over real photos (camera-resolution workloads)
- :mod:`ccied_p2p.testing`   clusters on loopback with emulated links and faults; the tests' wait helper
- :mod:`ccied_p2p.bench`     the ``bench`` commands; :mod:`ccied_p2p.report` renders their results
- :mod:`ccied_p2p.cli`       the ``ccied-p2p`` command (train, profile, prune, serve, infer, demo, bench); its
  ``status``/``dashboard`` in :mod:`ccied_p2p.observe_cli`, ``plan`` in :mod:`ccied_p2p.plan_cli`, ``demo`` in
  :mod:`ccied_p2p.demo`; :mod:`ccied_p2p.launch` builds a ``serve`` command line for launchers
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ccied_p2p import datasets, models
    from ccied_p2p.cache import SemanticCache
    from ccied_p2p.codec.tensor import Limits
    from ccied_p2p.errors import CCIEDError, LocalError, RemoteError
    from ccied_p2p.gossip.membership import MembershipConfig
    from ccied_p2p.inputs import InputSpec
    from ccied_p2p.pruning import prune_split_layer
    from ccied_p2p.runtime.config import (
        CacheConfig,
        ConnectionLimits,
        NetworkConfig,
        NodeConfig,
        ServingConfig,
        StrategyConfig,
    )
    from ccied_p2p.runtime.node import InferenceResult, Node, NodeObserver
    from ccied_p2p.scheduler import SchedulerPolicy
    from ccied_p2p.split import SplitModel

__all__ = [
    "CCIEDError",
    "CacheConfig",
    "ConnectionLimits",
    "InferenceResult",
    "InputSpec",
    "Limits",
    "LocalError",
    "MembershipConfig",
    "NetworkConfig",
    "Node",
    "NodeConfig",
    "NodeObserver",
    "RemoteError",
    "SchedulerPolicy",
    "SemanticCache",
    "ServingConfig",
    "SplitModel",
    "StrategyConfig",
    "datasets",
    "models",
    "prune_split_layer",
]
__version__ = "0.1.0"

# PEP 562: ``import ccied_p2p`` stays cheap (no torch, aiohttp or usearch) until a name is touched, so commands
# that need no model (``status``, ``dashboard``) and the pure layers start fast.
_LAZY: dict[str, str] = {
    "CCIEDError": "ccied_p2p.errors",
    "CacheConfig": "ccied_p2p.runtime.config",
    "ConnectionLimits": "ccied_p2p.runtime.config",
    "InferenceResult": "ccied_p2p.runtime.results",
    "InputSpec": "ccied_p2p.inputs",
    "Limits": "ccied_p2p.codec.tensor",
    "LocalError": "ccied_p2p.errors",
    "MembershipConfig": "ccied_p2p.gossip.membership",
    "NetworkConfig": "ccied_p2p.runtime.config",
    "Node": "ccied_p2p.runtime.node",
    "NodeConfig": "ccied_p2p.runtime.config",
    "NodeObserver": "ccied_p2p.runtime.results",
    "RemoteError": "ccied_p2p.errors",
    "SchedulerPolicy": "ccied_p2p.scheduler",
    "SemanticCache": "ccied_p2p.cache",
    "ServingConfig": "ccied_p2p.runtime.config",
    "SplitModel": "ccied_p2p.split",
    "StrategyConfig": "ccied_p2p.runtime.config",
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
