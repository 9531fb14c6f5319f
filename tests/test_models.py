from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ccied_p2p import datasets, models, training, workloads
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
    out = training._random_shift(x, 2, gen)
    assert out.shape == x.shape
    assert torch.all(out.sum(dim=(1, 2, 3)) == 1.0)  # the bright pixel survives, moved by up to 2 px
    pos = [np.unravel_index(int(o.argmax()), (28, 28)) for o in out[:, 0]]
    assert all(abs(r - 14) <= 2 and abs(c - 14) <= 2 for r, c in pos)


@pytest.mark.slow
@pytest.mark.weights("vgg/fashion-mnist", "lenet/fashion-mnist")
@pytest.mark.parametrize(("name", "target"), [("vgg", 0.91), ("lenet", 0.88)])
def test_reference_accuracy_on_fashion_mnist(fashion: datasets.Dataset, name: str, target: float) -> None:
    net = models.reference(name, fashion, progress=False)
    assert models.evaluate(net, fashion.test_x, fashion.test_y) >= target


@pytest.mark.parametrize(("dy", "dx"), [(0.3, -0.7), (1.0, 1.0), (-1.0, 0.5), (0.0, 0.0), (2.5, -3.25)])
def test_batched_shift_matches_the_camera_shift(dy: float, dx: float) -> None:
    image = np.random.default_rng(0).uniform(0, 255, (28, 28)).astype(np.float32)
    want = workloads.shift_image(image, dy, dx)
    got = models.shift_image_batch(
        torch.from_numpy(image)[None, None], torch.tensor([dy]), torch.tensor([dx])
    )
    np.testing.assert_allclose(got[0, 0].numpy(), want, atol=1e-3)


def test_camera_augment_with_a_still_camera_changes_nothing(mnist5k: datasets.Dataset) -> None:
    still = workloads.CameraParams(max_shift=0, noise_std=0, brightness=0, contrast=0)
    x = mnist5k.train_x[:64]
    out = models.camera_augment(mnist5k, still, fraction=1.0)(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    untouched = models.camera_augment(mnist5k, fraction=0.0)(x, torch.Generator().manual_seed(0))
    assert torch.equal(untouched, x)


def test_camera_augment_perturbs_like_the_camera_streams(mnist5k: datasets.Dataset) -> None:
    # The torch twin and workloads.perturb move the same images by the same amount, on average.
    images = mnist5k.test_images[:2000]
    cam = workloads.CameraParams()
    rng = np.random.default_rng(0)
    captured = np.stack([workloads.perturb(im, cam, rng) for im in images]).astype(np.float32)
    x = mnist5k.normalize(images)
    out = models.camera_augment(mnist5k, cam, fraction=1.0)(x, torch.Generator().manual_seed(0))
    augmented = ((out[:, 0] * mnist5k.std + mnist5k.mean) * 255.0).numpy()
    assert np.allclose(augmented, np.rint(augmented), atol=1e-3)  # whole grey levels, like a capture
    assert augmented.min() >= -1e-3
    assert augmented.max() <= 255 + 1e-3
    want = np.abs(captured - images).mean()
    got = np.abs(augmented - images).mean()
    assert want > 5.0
    assert abs(got - want) / want < 0.05, (got, want)


def test_camera_augment_half_the_batch(mnist5k: datasets.Dataset) -> None:
    x = mnist5k.train_x[:1000]
    out = models.camera_augment(mnist5k, fraction=0.5)(x, torch.Generator().manual_seed(0))
    changed = (out != x).flatten(1).any(1).float().mean().item()
    assert 0.45 < changed < 0.55
    with pytest.raises(ConfigError, match="fraction"):
        models.camera_augment(mnist5k, fraction=1.5)


def test_pruned_split_is_cached_per_recipe(mnist5k: datasets.Dataset, isolated_cache: Path) -> None:
    quick = models.PruneRecipe(finetune_epochs=1)
    assert models.has_pruned_weights("lenet", mnist5k, 0.0)
    assert not models.has_pruned_weights("lenet", mnist5k, 0.5, recipe=quick)
    first = models.reference_split("lenet", mnist5k, amount=0.5, progress=False, recipe=quick)
    assert models.has_pruned_weights("lenet", mnist5k, 0.5, recipe=quick)
    again = models.reference_split("lenet", mnist5k, amount=0.5, progress=False, recipe=quick)
    assert again.fingerprint == first.fingerprint
    assert first.channel_mask is not None
    assert again.channel_mask is not None
    assert torch.equal(again.channel_mask, first.channel_mask)
    # Another recipe is another file: never the stale weights.
    assert not models.has_pruned_weights(
        "lenet", mnist5k, 0.5, recipe=models.PruneRecipe(finetune_epochs=1, camera_fraction=0.0)
    )
    assert not models.has_pruned_weights("lenet", mnist5k, 0.25, recipe=quick)
