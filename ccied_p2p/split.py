"""Splitting a model into a head (runs on the asking device) and a tail (runs wherever the scheduler says).

``SplitModel.from_module`` traces any ``nn.Module`` with torch.fx and cuts the graph after one node. A cut is
valid when nothing after it reads anything before it except through the cut (a skip connection that jumps over
the cut makes it invalid); ``candidates()`` lists every valid cut.
"""

from __future__ import annotations

import hashlib
import operator
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import fx, nn

from ccied_p2p.errors import SplitError
from ccied_p2p.profile import LayerProfile, SplitProfile

__all__ = ["LayerProfile", "SplitModel", "SplitProfile", "candidates", "fingerprint_of", "single_thread"]


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread inside the block (the per-node setting; see DESIGN.md)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _trace(module: nn.Module) -> fx.GraphModule:
    if isinstance(module, fx.GraphModule):
        return module
    try:
        return fx.symbolic_trace(module)
    except Exception as exc:  # torch.fx raises many types; all mean "not traceable"
        raise SplitError(f"{type(module).__name__} is not traceable by torch.fx: {exc}") from exc


def _node_label(node: fx.Node) -> str:
    """The name users give a cut: the module path of a module called once, else the fx node name."""
    if node.op != "call_module":
        return node.name
    calls = sum(1 for n in node.graph.nodes if n.op == "call_module" and n.target == node.target)
    return str(node.target) if calls == 1 else node.name


def _resolve(graph: fx.Graph, split_at: str | int, module: nn.Module) -> fx.Node:
    if isinstance(split_at, int):
        if not isinstance(module, nn.Sequential):
            raise SplitError("an integer split point needs an nn.Sequential; name a node instead")
        n = len(module)
        index = split_at + n if split_at < 0 else split_at
        if not 0 <= index < n - 1:
            raise SplitError(f"split index {split_at} out of range for a Sequential of {n} layers")
        split_at = str(index)
    by_name = [n for n in graph.nodes if n.name == split_at]
    by_target = [n for n in graph.nodes if n.op == "call_module" and n.target == split_at]
    matches = by_name or by_target
    if len(matches) > 1:
        raise SplitError(f"{split_at!r} is called {len(matches)} times; name one fx node instead")
    if not matches:
        raise SplitError(f"no node named {split_at!r}; valid cuts: {', '.join(_cut_labels(graph)[:40])}")
    node: fx.Node = matches[0]
    return node


def _is_batch_size(node: fx.Node) -> bool:
    """``t.size(0)`` or ``t.shape[0]``: the batch size, which the tail can read off its own input."""
    if node.op == "call_method" and node.target == "size":
        return bool(node.args[1:] == (0,) or node.kwargs.get("dim") == 0)
    if node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0:
        src = node.args[0]
        return isinstance(src, fx.Node) and (
            (src.op == "call_function" and src.target is getattr and src.args[1] == "shape")
            or (src.op == "call_method" and src.target == "size" and len(src.args) == 1)
        )
    return False


def _crossing_inputs(nodes: list[fx.Node], cut: int) -> set[fx.Node]:
    """Nodes at or before ``cut`` that a node after it reads (constants and the batch size excluded)."""
    before = set(nodes[: cut + 1])
    crossing: set[fx.Node] = set()
    for node in nodes[cut + 1 :]:
        for inp in node.all_input_nodes:
            if inp in before and inp.op != "get_attr" and not _is_batch_size(inp):
                crossing.add(inp)
    return crossing


def _cut_labels(graph: fx.Graph) -> list[str]:
    nodes = list(graph.nodes)
    labels = []
    for i, node in enumerate(nodes):
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        if nodes[i + 1].op == "output":
            continue
        if _crossing_inputs(nodes, i) <= {node}:
            labels.append(_node_label(node))
    return labels


def candidates(module: nn.Module) -> list[str]:
    """Every valid cut of ``module``, in execution order."""
    return _cut_labels(_trace(module).graph)


def _cut(gm: fx.GraphModule, split: fx.Node) -> tuple[fx.GraphModule, fx.GraphModule]:
    nodes = list(gm.graph.nodes)
    cut = nodes.index(split)
    crossing = _crossing_inputs(nodes, cut)
    if crossing - {split}:
        names = ", ".join(sorted(n.name for n in crossing - {split}))
        raise SplitError(f"cannot cut after {_node_label(split)!r}: later nodes also read {names} (a skip)")

    head = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in nodes[: cut + 1]:
        env[node] = head.node_copy(node, lambda n: env[n])
    head.output(env[split])

    tail = fx.Graph()
    h = tail.placeholder("h")
    tenv: dict[fx.Node, fx.Node] = {split: h}
    after = set(nodes[cut + 1 :])
    for node in nodes[:cut]:
        if not any(u in after for u in node.users):
            continue
        if node.op == "get_attr":
            tenv[node] = tail.node_copy(node, lambda n: tenv[n])
        elif _is_batch_size(node):
            tenv[node] = tail.call_method("size", (h, 0))
    for node in nodes[cut + 1 :]:
        tenv[node] = tail.node_copy(node, lambda n: tenv[n])
    parts = []
    for graph, cls_name in ((head, "Head"), (tail, "Tail")):
        part = fx.GraphModule(gm, graph, cls_name)
        part.graph.eliminate_dead_code()
        part.recompile()
        part.delete_all_unused_submodules()
        parts.append(part)
    return parts[0], parts[1]


def fingerprint_of(
    head: nn.Module, tail: nn.Module, split_at: str, channel_mask: torch.Tensor | None = None
) -> str:
    """SHA-256 over the generated code, every parameter and buffer, the split name and the pruning mask."""
    h = hashlib.sha256()
    h.update(b"ccied-split-v1\0" + split_at.encode() + b"\0")
    for part in (head, tail):
        if isinstance(part, fx.GraphModule):
            h.update(part.code.encode())
        for name, tensor in list(part.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    if channel_mask is not None:
        h.update(b"mask\0" + channel_mask.to(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _verify(module: nn.Module, head: nn.Module, tail: nn.Module, example: torch.Tensor, label: str) -> None:
    """Check tail(head(x)) == module(x) on a batch of two, so a wrong cut fails here and not in production."""
    x = torch.cat([example[:1], example[:1].flip(-1)]) if example.dim() >= 2 else example
    with torch.inference_mode():
        want = module(x)
        got = tail(head(x))
    if not (isinstance(want, torch.Tensor) and isinstance(got, torch.Tensor)):
        raise SplitError("the model and its split must each return one tensor")
    if got.shape != want.shape or not torch.allclose(got, want, atol=1e-5, rtol=1e-4):
        raise SplitError(f"the cut after {label!r} changes the output; report this model to ccied-p2p")


def _macs(module: nn.Module | None, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return int(out.numel() // out.shape[0]) * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return int(out.numel() // out.shape[0]) * module.in_features
    return 0


class _Timer(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.times: dict[str, float] = {}
        self.outputs: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        start = time.perf_counter()
        out = super().run_node(n)
        self.times[n.name] = time.perf_counter() - start
        self.outputs[n.name] = out
        return out


class SplitModel:
    """A model cut in two: ``tail(head(x)) == module(x)``."""

    def __init__(
        self,
        head: fx.GraphModule,
        tail: fx.GraphModule,
        split_at: str,
        example_input: torch.Tensor,
        channel_mask: torch.Tensor | None = None,
        name: str = "model",
    ) -> None:
        self.head_module = head.eval()
        self.tail_module = tail.eval()
        self.split_at = split_at
        self.example_input = example_input[:1].detach().clone()
        self.channel_mask = channel_mask
        self.name = name
        with torch.inference_mode():
            act = self.head_module(self.example_input)
        self.activation_shape: tuple[int, ...] = tuple(act.shape[1:])
        self.fingerprint = fingerprint_of(head, tail, split_at, channel_mask)

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        split_at: str | int,
        example_input: torch.Tensor,
        name: str | None = None,
    ) -> SplitModel:
        """Split ``module`` after the node ``split_at`` (fx node name, module path, or Sequential index)."""
        was_training = module.training
        module.eval()
        try:
            gm = _trace(module)
            node = _resolve(gm.graph, split_at, module)
            head, tail = _cut(gm, node)
            _verify(module, head, tail, example_input, _node_label(node))
        finally:
            module.train(was_training)
        return cls(head, tail, _node_label(node), example_input, name=name or type(module).__name__)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Run the head (no grad); ``x`` batch first."""
        with torch.inference_mode():
            out: torch.Tensor = self.head_module(x)
        return out

    def tail(self, h: torch.Tensor) -> torch.Tensor:
        """Run the tail on an activation (no grad); returns logits."""
        with torch.inference_mode():
            out: torch.Tensor = self.tail_module(h)
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.head(x))

    def refresh_fingerprint(self) -> None:
        """Recompute the fingerprint after weights or the mask changed."""
        self.fingerprint = fingerprint_of(
            self.head_module, self.tail_module, self.split_at, self.channel_mask
        )

    @property
    def activation_bytes(self) -> int:
        """Raw float32 bytes of one image's activation at the split."""
        n = 1
        for d in self.activation_shape:
            n *= d
        return 4 * n

    def profile(self, repeats: int = 30, x: torch.Tensor | None = None) -> SplitProfile:
        """Per-layer latency (median of ``repeats``, one thread), shapes, bytes, parameters and MACs."""
        inp = self.example_input if x is None else x[:1]
        layers: list[LayerProfile] = []
        part_ms = {"head": 0.0, "tail": 0.0}
        part_macs = {"head": 0, "tail": 0}
        with single_thread(), torch.inference_mode():
            value: Any = inp
            for part, gm in (("head", self.head_module), ("tail", self.tail_module)):
                samples: dict[str, list[float]] = {}
                timer = _Timer(gm)
                out: Any = None
                for _ in range(repeats):
                    out = timer.run(value)
                    for key, t in timer.times.items():
                        samples.setdefault(key, []).append(t)
                modules = dict(gm.named_modules())
                for node in gm.graph.nodes:
                    if node.op in ("placeholder", "output", "get_attr"):
                        continue
                    res = timer.outputs[node.name]
                    mod = modules.get(str(node.target)) if node.op == "call_module" else None
                    tensor = res if isinstance(res, torch.Tensor) else None
                    ms = statistics.median(samples[node.name]) * 1000
                    macs = _macs(mod, tensor) if tensor is not None else 0
                    op = (
                        type(mod).__name__
                        if mod is not None
                        else str(getattr(node.target, "__name__", node.target))
                    )
                    layers.append(
                        LayerProfile(
                            name=_node_label(node),
                            op=op,
                            part=part,
                            latency_ms=ms,
                            shape=tuple(tensor.shape) if tensor is not None else (),
                            bytes=tensor.numel() * tensor.element_size() if tensor is not None else 0,
                            params=sum(p.numel() for p in mod.parameters(recurse=False))
                            if mod is not None
                            else 0,
                            macs=macs,
                        )
                    )
                    part_ms[part] += ms
                    part_macs[part] += macs
                value = out
        return SplitProfile(
            layers=tuple(layers),
            split_at=self.split_at,
            head_ms=part_ms["head"],
            tail_ms=part_ms["tail"],
            head_macs=part_macs["head"],
            tail_macs=part_macs["tail"],
            activation_bytes=self.activation_bytes,
            input_bytes=inp.numel() * inp.element_size(),
        )

    def __repr__(self) -> str:
        return f"SplitModel({self.name}, split_at={self.split_at!r}, fingerprint={self.fingerprint[:12]})"
