from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ccied_p2p import SplitModel, datasets, models, prune_split_layer, workloads
from ccied_p2p.errors import SplitError
from ccied_p2p.pruning import find_split_layer, prune_report


def _vgg_split() -> SplitModel:
    torch.manual_seed(0)
    net = models.build("vgg").eval()
    return SplitModel.from_module(net, split_at="features.7", example_input=torch.randn(1, 1, 28, 28))


def _params(split: SplitModel) -> dict[str, torch.Tensor]:
    out = {f"head.{k}": v.clone() for k, v in split.head_module.state_dict().items()}
    out.update({f"tail.{k}": v.clone() for k, v in split.tail_module.state_dict().items()})
    return out


def test_finds_the_layer_that_produces_the_activation() -> None:
    split = _vgg_split()
    layer = find_split_layer(split)
    assert layer.name == "features.4"
    assert isinstance(layer.layer, nn.Conv2d)
    assert len(layer.norms) == 1


def test_only_the_split_layer_changes_and_pruned_channels_are_zero() -> None:
    split = _vgg_split()
    before = _params(split)
    pruned = prune_split_layer(split, amount=0.75)
    after = _params(pruned)
    assert _params(split).keys() == before.keys()
    for key, value in _params(split).items():  # the input is not modified
        assert torch.equal(value, before[key])
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed
    assert changed <= {"head.features.4.weight", "head.features.5.weight", "head.features.5.bias"}

    mask = pruned.channel_mask
    assert mask is not None
    assert mask.shape == (64,)
    assert int(mask.sum()) == 16
    act = pruned.head(torch.randn(16, 1, 28, 28))
    assert torch.all(act[:, ~mask] == 0)
    assert torch.any(act[:, mask] != 0)
    assert pruned.fingerprint != split.fingerprint
    w = pruned.head_module.get_submodule("features.4").weight
    assert isinstance(w, torch.Tensor)
    assert torch.all(w[~mask] == 0)
    # Permanent: no pruning re-parametrisation left behind.
    assert not hasattr(pruned.head_module.get_submodule("features.4"), "weight_orig")


def test_unstructured_option_keeps_all_channels() -> None:
    pruned = prune_split_layer(_vgg_split(), amount=0.5, structured=False)
    w = pruned.head_module.get_submodule("features.4").weight
    assert isinstance(w, torch.Tensor)
    assert abs(float((w == 0).float().mean()) - 0.5) < 0.01
    assert pruned.channel_mask is not None
    assert bool(pruned.channel_mask.all())


def test_bad_amount_and_unprunable_cut() -> None:
    with pytest.raises(SplitError, match="amount"):
        prune_split_layer(_vgg_split(), amount=1.0)
    seq = nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 2)).eval()
    split = SplitModel.from_module(seq, split_at=1, example_input=torch.randn(1, 4))
    with pytest.raises(SplitError, match="cannot find the layer"):
        prune_split_layer(split, amount=0.5)


def test_finetune_recovers_on_real_digits(mnist5k: datasets.Dataset, isolated_cache: object) -> None:
    net = models.reference("lenet", mnist5k, epochs=2, progress=False)
    split = SplitModel.from_module(net, split_at="features.3", example_input=mnist5k.test_x[:1])
    raw = prune_split_layer(split, amount=0.5)
    tuned = prune_split_layer(split, amount=0.5, finetune=mnist5k, epochs=1, progress=False)
    raw_acc = models.evaluate(raw, mnist5k.test_x, mnist5k.test_y)
    tuned_acc = models.evaluate(tuned, mnist5k.test_x, mnist5k.test_y)
    assert tuned_acc >= raw_acc - 0.01
    assert tuned.channel_mask is not None
    assert int(tuned.channel_mask.sum()) == 3


@pytest.mark.slow
@pytest.mark.weights("vgg/fashion-mnist@0.75")
def test_vgg_pruning_targets_on_fashion_mnist(fashion: datasets.Dataset) -> None:
    base = models.reference_split("vgg", fashion, amount=0.0, progress=False)
    pruned = models.reference_split("vgg", fashion, amount=0.75, progress=False)
    report = prune_report(base, pruned, fashion, 0.75)
    assert report.channels_pruned >= 0.75
    assert report.accuracy_before - report.accuracy_after <= 0.01
    assert report.sparsity >= 0.85
    # Fine-tuned partly on camera-like captures, it loses nothing on them against the unpruned model.
    rng = np.random.default_rng(7)
    captured = np.stack([workloads.perturb(im, workloads.CameraParams(), rng) for im in fashion.test_images])
    x = fashion.normalize(captured)
    assert models.evaluate(pruned, x, fashion.test_y) >= models.evaluate(base, x, fashion.test_y) - 0.005
    # The cache gives back the same pruned model.
    assert (
        models.reference_split("vgg", fashion, amount=0.75, progress=False).fingerprint == pruned.fingerprint
    )
