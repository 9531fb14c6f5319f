"""Split-layer pruning (CCIED): prune only the layer that produces the split activation.

Structured pruning removes whole output channels of that layer (a Conv2d or Linear) ranked by the L1 norm of
their effective weights (the conv kernel scaled by the following BatchNorm's gamma/sigma), using
``torch.nn.utils.prune``. A BatchNorm between the layer and the cut would turn a zero channel into a constant
(its beta), so its gamma and beta are masked too: the pruned channels of the activation are exactly zero and
the activation that crosses the network is sparse. Every other layer keeps its structure; the whole network is
then fine-tuned with the masks in place, and the pruning is made permanent.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.nn.utils import prune

from ccied_p2p.datasets import Dataset
from ccied_p2p.errors import SplitError
from ccied_p2p.split import SplitModel
from ccied_p2p.training import Augment, TrainConfig, evaluate, train

__all__ = ["PruneReport", "find_split_layer", "prune_report", "prune_split_layer"]

# Modules and functions that map an all-zero channel to an all-zero channel (given masked BN affine params).
_ZERO_PRESERVING_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.Hardswish, nn.GELU, nn.MaxPool2d, nn.AvgPool2d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d, nn.Identity, nn.BatchNorm2d,
    nn.BatchNorm1d, nn.Flatten,
)  # fmt: skip
_ZERO_PRESERVING_FUNCTIONS = {
    torch.relu, nn.functional.relu, nn.functional.relu6, nn.functional.silu, nn.functional.max_pool2d,
    nn.functional.avg_pool2d, nn.functional.adaptive_avg_pool2d, nn.functional.dropout, torch.flatten,
    operator.getitem,
}  # fmt: skip
_ZERO_PRESERVING_METHODS = {"relu", "relu_", "flatten", "view", "reshape", "contiguous"}


@dataclass(frozen=True)
class SplitLayer:
    """The layer that produces the activation, and the BatchNorms between it and the cut."""

    name: str
    layer: nn.Conv2d | nn.Linear
    norms: tuple[nn.BatchNorm2d | nn.BatchNorm1d, ...]


def find_split_layer(split: SplitModel) -> SplitLayer:
    """Walk back from the cut through zero-preserving ops to the Conv2d/Linear that produces it."""
    gm = split.head_module
    modules = dict(gm.named_modules())
    out = next(n for n in gm.graph.nodes if n.op == "output")
    node = out.args[0]
    norms: list[nn.BatchNorm2d | nn.BatchNorm1d] = []
    while isinstance(node, fx.Node):
        if node.op == "call_module":
            mod = modules[str(node.target)]
            if isinstance(mod, nn.Conv2d | nn.Linear):
                return SplitLayer(str(node.target), mod, tuple(reversed(norms)))
            if isinstance(mod, nn.BatchNorm2d | nn.BatchNorm1d):
                norms.append(mod)
            elif not isinstance(mod, _ZERO_PRESERVING_MODULES):
                break
        elif node.op == "call_function":
            if node.target not in _ZERO_PRESERVING_FUNCTIONS:
                break
        elif node.op == "call_method":
            if node.target not in _ZERO_PRESERVING_METHODS:
                break
        else:
            break
        node = node.args[0] if node.args else None
    raise SplitError(
        f"cannot find the layer producing the activation at {split.split_at!r}: the path back from the cut "
        "must reach a Conv2d or Linear through zero-preserving ops (ReLU, pooling, BatchNorm, dropout, ...)"
    )


def _effective_importance(layer: nn.Conv2d | nn.Linear, norms: tuple[nn.Module, ...]) -> torch.Tensor:
    w = layer.weight.detach().abs()
    scale = torch.ones(w.shape[0])
    for bn in norms:
        assert isinstance(bn, nn.BatchNorm2d | nn.BatchNorm1d)
        if bn.weight is not None and bn.running_var is not None:
            scale = scale * (bn.weight.detach().abs() / torch.sqrt(bn.running_var + bn.eps))
    return w * scale.view(-1, *([1] * (w.dim() - 1)))


def prune_split_layer(
    split: SplitModel,
    amount: float,
    structured: bool = True,
    finetune: Dataset | None = None,
    epochs: int = 1,
    lr: float = 0.01,
    seed: int = 0,
    progress: bool = True,
    activation_l1: float = 0.0,
    augment: Augment | None = None,
) -> SplitModel:
    """A new SplitModel whose split layer lost ``amount`` of its output channels (or weights, unstructured).

    With ``finetune`` the whole network is trained for ``epochs`` with the mask held, to recover accuracy;
    ``activation_l1`` adds that weight times the mean absolute split activation to the loss, which drives
    more of the surviving channels' values to zero (sparser, smaller transfers); ``augment`` is applied to
    every fine-tuning batch (see :func:`ccied_p2p.training.camera_augment`). The input is not modified.
    """
    if not 0.0 <= amount < 1.0:
        raise SplitError(f"amount must be in [0, 1), got {amount}")
    new = SplitModel(
        copy.deepcopy(split.head_module),
        copy.deepcopy(split.tail_module),
        split.split_at,
        split.example_input,
        name=split.name,
    )
    target = find_split_layer(new)
    layer = target.layer
    out_channels = layer.weight.shape[0]
    if structured:
        prune.ln_structured(  # type: ignore[no-untyped-call]
            layer,
            "weight",
            amount=amount,
            n=1,
            dim=0,
            importance_scores=_effective_importance(layer, target.norms),
        )
        weight_mask: torch.Tensor = layer.weight_mask  # type: ignore[assignment]
        keep = weight_mask.flatten(1).any(dim=1)
        if layer.bias is not None:
            prune.custom_from_mask(layer, "bias", keep.float())  # type: ignore[no-untyped-call]
        for bn in target.norms:
            prune.custom_from_mask(bn, "weight", keep.float())  # type: ignore[no-untyped-call]
            prune.custom_from_mask(bn, "bias", keep.float())  # type: ignore[no-untyped-call]
    else:
        prune.l1_unstructured(layer, "weight", amount=amount)  # type: ignore[no-untyped-call]
        keep = torch.ones(out_channels, dtype=torch.bool)

    if finetune is not None and epochs > 0:
        whole = nn.Sequential(new.head_module, new.tail_module)
        config = TrainConfig(epochs=epochs, lr=lr, seed=seed, shift=1)
        seen: list[torch.Tensor] = []
        hook = new.head_module.register_forward_hook(lambda _m, _i, out: seen.append(out))

        def penalty() -> torch.Tensor:
            act = seen.pop()
            seen.clear()
            return activation_l1 * act.abs().mean()

        try:
            train(
                whole,
                finetune,
                config,
                progress=progress,
                desc=f"fine-tune {amount:.0%} pruned",
                penalty=penalty if activation_l1 > 0 else None,
                augment=augment,
            )
        finally:
            hook.remove()

    for module in [layer, *target.norms]:
        for pname in ("weight", "bias"):
            if prune.is_pruned(module) and hasattr(module, f"{pname}_orig"):
                prune.remove(module, pname)  # type: ignore[no-untyped-call]
    new.head_module.eval()
    new.tail_module.eval()
    new.channel_mask = keep.clone()
    new.refresh_fingerprint()
    return new


@dataclass(frozen=True)
class PruneReport:
    model: str
    split: str
    amount: float
    channels_pruned: float
    accuracy_before: float
    accuracy_after: float
    sparsity: float
    raw_bytes: float
    nonzero_bytes: float


def prune_report(before: SplitModel, after: SplitModel, data: Dataset, amount: float) -> PruneReport:
    """Accuracy before/after on the test set, channel fraction pruned, activation sparsity and raw bytes."""

    acc_before = evaluate(before, data.test_x, data.test_y)
    acc_after = evaluate(after, data.test_x, data.test_y)
    zeros = 0
    total = 0
    with torch.inference_mode():
        for i in range(0, len(data.test_x), 1000):
            act = after.head(data.test_x[i : i + 1000])
            zeros += int((act == 0).sum())
            total += act.numel()
    mask = after.channel_mask
    pruned = 0.0 if mask is None else 1.0 - float(mask.float().mean())
    sparsity = zeros / max(1, total)
    return PruneReport(
        model=after.name,
        split=after.split_at,
        amount=amount,
        channels_pruned=pruned,
        accuracy_before=acc_before,
        accuracy_after=acc_after,
        sparsity=sparsity,
        raw_bytes=float(after.activation_bytes),
        nonzero_bytes=after.activation_bytes * (1 - sparsity),
    )
