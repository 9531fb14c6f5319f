from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ccied_p2p import datasets, models
from ccied_p2p.errors import ConfigError


def test_reference_trains_once_then_reuses(mnist5k: datasets.Dataset, isolated_cache: Path) -> None:
    a = models.reference("lenet", mnist5k, epochs=1, progress=False)
    first = models.last_report("lenet")
    assert first is not None
    assert not first.reused
    assert Path(first.path).parent == isolated_cache
    assert first.test_accuracy > 0.5  # one epoch on 4000 real digits already learns something

    b = models.reference("lenet", mnist5k, epochs=1, progress=False)
    second = models.last_report("lenet")
    assert second is not None
    assert second.reused
    assert second.path == first.path
    assert second.test_accuracy == first.test_accuracy
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb
        assert torch.equal(va, vb)
    # The file is plain safetensors: no pickle involved.
    assert set(load_file(first.path)) == set(a.state_dict())

    models.reference("lenet", mnist5k, epochs=2, progress=False)
    third = models.last_report("lenet")
    assert third is not None
    assert not third.reused
    assert third.path != first.path


def test_training_is_seeded(mnist5k: datasets.Dataset, isolated_cache: Path) -> None:
    a = models.reference("lenet", mnist5k, epochs=1, progress=False)
    b = models.reference("lenet", mnist5k, epochs=1, progress=False, retrain=True)
    for va, vb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.allclose(va.float(), vb.float(), atol=1e-5)


def test_unknown_model() -> None:
    with pytest.raises(ConfigError, match="unknown model"):
        models.build("resnet")


def test_shift_augmentation_moves_pixels() -> None:
    x = torch.zeros(4, 1, 28, 28)
    x[:, :, 14, 14] = 1.0
    gen = torch.Generator().manual_seed(1)
    out = models._shift_batch(x, 2, gen)
    assert out.shape == x.shape
    assert torch.all(out.sum(dim=(1, 2, 3)) == 1.0)  # the bright pixel survives, moved by up to 2 px
    pos = [np.unravel_index(int(o.argmax()), (28, 28)) for o in out[:, 0]]
    assert all(abs(r - 14) <= 2 and abs(c - 14) <= 2 for r, c in pos)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "target"), [("vgg", 0.91), ("lenet", 0.88)])
def test_reference_accuracy_on_fashion_mnist(fashion: datasets.Dataset, name: str, target: float) -> None:
    net = models.reference(name, fashion, progress=False)
    assert models.evaluate(net, fashion.test_x, fashion.test_y) >= target
