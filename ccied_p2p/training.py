"""Training and evaluating a classifier: SGD with a one-cycle schedule, shift and camera augmentation.

Apart from :mod:`ccied_p2p.models` (which trains the reference models with it and caches their weights) so that
:mod:`ccied_p2p.pruning` can fine-tune without importing the model zoo, and the zoo can prune without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ccied_p2p.datasets import Dataset
from ccied_p2p.errors import ConfigError
from ccied_p2p.workloads import CameraParams

__all__ = ["Augment", "TrainConfig", "camera_augment", "evaluate", "shift_image_batch", "train"]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 5e-4
    seed: int = 0
    shift: int = 2  # random translation by up to this many pixels (augmentation)
    recipe: int = 1  # bump when the training code changes meaning


def _random_shift(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    if shift <= 0:
        return x
    n = x.shape[0]
    padded = nn.functional.pad(x, (shift, shift, shift, shift), value=float(x.min()))
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    h, w = x.shape[-2:]
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * shift)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
    return out.gather(3, cols)


Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def shift_image_batch(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Each image of ``x`` (N, C, H, W) moved by its own ``(dy[i], dx[i])`` pixels, bilinear, zero fill.

    The batched torch form of :func:`ccied_p2p.workloads.shift_image`: ``out[y, x] = in[y - dy, x - dx]``.
    """
    h, w = x.shape[-2:]
    theta = torch.zeros(x.shape[0], 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -dx * 2 / w  # affine_grid's unit is half the image width
    theta[:, 1, 2] = -dy * 2 / h
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def camera_augment(data: Dataset, params: CameraParams | None = None, fraction: float = 0.5) -> Augment:
    """A training augmentation: ``fraction`` of each batch seen through the camera of ``params``.

    The torch twin of :func:`ccied_p2p.workloads.perturb` for normalised batches: a sub-pixel shift
    (bilinear, black fill), contrast gain, brightness offset and sensor noise in grey levels, rounded and
    clipped to 0..255. Fine-tuning a pruned split on it keeps the accuracy the camera streams would
    otherwise lose (the base models were trained on clean, integer-shifted images).
    """
    cam = params or CameraParams()
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"fraction must be in [0, 1], got {fraction}")

    def apply(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        chosen = torch.rand(x.shape[0], generator=gen) < fraction
        k = int(chosen.sum())
        if k == 0:
            return x
        px = (x[chosen] * data.std + data.mean) * 255.0

        def uniform(scale: float) -> torch.Tensor:
            return (torch.rand(k, generator=gen) * 2 - 1) * scale

        if cam.max_shift > 0:
            px = shift_image_batch(px, uniform(cam.max_shift), uniform(cam.max_shift))
        gain = 1.0 + uniform(cam.contrast)
        offset = uniform(cam.brightness)
        px = px * gain[:, None, None, None] + offset[:, None, None, None]
        px = px + torch.randn(px.shape, generator=gen) * cam.noise_std
        out = x.clone()
        out[chosen] = (px.round().clamp(0, 255) / 255.0 - data.mean) / data.std
        return out

    return apply


def evaluate(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, batch: int = 1000
) -> float:
    """Top-1 accuracy (0..1) of ``model`` on ``x``/``y``."""
    if isinstance(model, nn.Module):
        model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / max(1, len(x))


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    progress: bool = True,
    desc: str = "train",
    penalty: Callable[[], torch.Tensor] | None = None,
    augment: Augment | None = None,
) -> nn.Module:
    """SGD with Nesterov momentum and a one-cycle schedule; deterministic for a given seed and thread count.

    Each batch is shifted by up to ``config.shift`` pixels, then passed through ``augment`` if given;
    ``penalty()`` is added to the loss after the forward pass.
    """
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    x, y = data.train_x, data.train_y
    steps_per_epoch = (len(x) + config.batch_size - 1) // config.batch_size
    opt = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=max(1, config.epochs * steps_per_epoch), pct_start=0.25
    )
    model.train()
    bar = tqdm(
        total=config.epochs * steps_per_epoch,
        desc=desc,
        disable=None if progress else True,
        unit="batch",
        leave=False,
    )
    try:
        for _ in range(config.epochs):
            order = torch.randperm(len(x), generator=gen)
            for i in range(steps_per_epoch):
                idx = order[i * config.batch_size : (i + 1) * config.batch_size]
                xb = _random_shift(x[idx], config.shift, gen)
                if augment is not None:
                    xb = augment(xb, gen)
                loss = nn.functional.cross_entropy(model(xb), y[idx])
                if penalty is not None:
                    loss = loss + penalty()
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                sched.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.detach().item():.3f}", refresh=False)
    finally:
        bar.close()
    return model.eval()
