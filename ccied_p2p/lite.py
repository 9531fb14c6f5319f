"""EfficientNet-Lite0 split at camera resolution, and split-layer pruning for a linear-bottleneck split layer.

An EfficientNet block ends in a 1x1 projection conv and a BatchNorm with no activation (a linear bottleneck):
its output has no zeros, so the sparse codec cannot shrink it, and its channels are all alike in magnitude, so
dropping the weakest ones loses more than it does after a ReLU. :func:`lite0_split` prunes it in three steps:

1. **Rotate.** Projection and BatchNorm together are affine, so a rotation of their output folds into them: the
   principal axes of the activation on train-clip frames become the channels, ordered by variance (conv
   weights rotated; the BatchNorm becomes a per-channel bias).
2. **Prune.** The last ``1 - keep`` channels are pruned structurally: conv rows and BatchNorm affine zeroed, so
   they are exactly zero and the channel mask on the wire drops them. The tail starts with a 1x1 conv that
   maps the kept channels back (initialised with the principal axes and mean: the best linear
   reconstruction).
3. **Distil.** Without labels: the rotated block, the decoder and the tail are fine-tuned to match the
   unpruned model's logits (KL divergence at ``temperature``) on frames of the train clips only, the split
   activation passed through int8 fake quantisation as it is sent. The stem and earlier blocks are frozen,
   so their output and the teacher's logits are computed once.

Pruned weights are cached as safetensors under ``$CCIED_CACHE`` keyed by the recipe, like the 28x28 models.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from safetensors.torch import load_file
from torch import nn

from ccied_p2p.errors import ConfigError
from ccied_p2p.split import SplitModel

__all__ = [
    "CUTS",
    "DEFAULT_CUT",
    "MODEL",
    "WIRE_ENCODING",
    "DistillRecipe",
    "cut_table",
    "lite0_split",
    "prune_summary",
    "to_input",
]

log = logging.getLogger(__name__)

MODEL = "efficientnet-lite0"
# Lite0 blocks with no residual around them: their output is one tensor, cut after the projection's BatchNorm.
CUTS: dict[str, str] = {
    "_blocks.3": "_blocks.3._bn2",  # 40x28x28
    "_blocks.5": "_blocks.5._bn2",  # 80x14x14
    "_blocks.8": "_blocks.8._bn2",  # 112x14x14
    "_blocks.11": "_blocks.11._bn2",  # 192x7x7
}
DEFAULT_CUT = "_blocks.5"
# What an unpruned Lite0 split sends: its linear-bottleneck activation has no zeros, so a sparse layout only adds
# a bitmap, and per-channel 4-bit values lose less top-1 agreement than dropping channels does at the same size
# (ccied-p2p prune --model efficientnet-lite0 --cuts; README, Camera resolution). Deflate (run-length and
# Huffman coding) takes a fifth off the 4-bit values, which lz4 cannot shrink; the values are the same.
WIRE_ENCODING = "dense-i4-deflate"


def to_input(images: npt.NDArray[np.uint8]) -> torch.Tensor:
    """uint8 frames (N, H, W, 3) to Lite0's input: float (N, 3, H, W) in [-1, 1]."""
    from ccied_p2p.camera import normalize

    return torch.from_numpy(normalize(images))


@dataclass(frozen=True)
class DistillRecipe:
    """How :func:`lite0_split` prunes and distils; all of it is part of the weight cache key.

    ``keep`` channels of the split layer survive; fine-tuning runs ``epochs`` over every ``frame_step``-th frame
    of the train clips (Adam at ``lr``, batches of ``batch``) and trains only the cut's block, the decoder and
    the ``tune_blocks - 1`` blocks after it. Measured (keep 28, one epoch on every 4th frame): training the
    whole tail as well took top-1 accuracy on the photo camera from 64% to 0% (the classifier forgets the
    ImageNet classes the clips do not show); the rotation alone kept it within 0.5 pp.
    """

    keep: int = 28
    epochs: int = 3
    lr: float = 1e-4
    tune_blocks: int = 3
    temperature: float = 2.0
    batch: int = 16
    frame_step: int = 1
    seed: int = 0
    version: int = 1


class _Decoded(nn.Module):
    """The block after the cut, behind a 1x1 conv that maps the kept channels back (EfficientNet block API)."""

    def __init__(self, decoder: nn.Conv2d, block: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder
        self.block = block

    def forward(self, x: torch.Tensor, drop_connect_rate: float | None = None) -> torch.Tensor:
        out: torch.Tensor = self.block(self.decoder(x), drop_connect_rate=drop_connect_rate)
        return out


def _block_index(cut: str) -> int:
    if cut not in CUTS:
        raise ConfigError(f"unknown Lite0 cut {cut!r}; choose one of {', '.join(CUTS)}")
    return int(cut.rsplit(".", 1)[1])


def _restructure(model: nn.Module, cut: str) -> nn.Module:
    """Insert the (identity-initialised) decoder in front of the block after ``cut``; weights come later."""
    i = _block_index(cut)
    blocks: Any = model._blocks
    channels = int(blocks[i]._bn2.num_features)
    decoder = nn.Conv2d(channels, channels, 1, bias=True)
    with torch.no_grad():
        decoder.weight.copy_(torch.eye(channels)[:, :, None, None])
        assert decoder.bias is not None
        decoder.bias.zero_()
    blocks[i + 1] = _Decoded(decoder, blocks[i + 1])
    return model


def _prefix(model: nn.Module, cut: str, x: torch.Tensor) -> torch.Tensor:
    """The frozen part: stem and the blocks before the cut's block."""
    m: Any = model
    out: torch.Tensor = m._swish(m._bn0(m._conv_stem(x)))
    for block in list(m._blocks)[: _block_index(cut)]:
        out = block(out)
    return out


def _suffix(model: nn.Module, cut: str, h: torch.Tensor) -> torch.Tensor:
    """From the prefix's output to the logits: the cut's block, the (decoded) rest and the classifier."""
    m: Any = model
    i = _block_index(cut)
    blocks = list(m._blocks)
    x = blocks[i](h)
    x = _fake_int8(x)
    for block in blocks[i + 1 :]:
        x = block(x)
    x = m._swish(m._bn1(m._conv_head(x)))
    x = m._avg_pooling(x).flatten(1)
    out: torch.Tensor = m._fc(m._dropout(x))
    return out


def _fake_int8(x: torch.Tensor) -> torch.Tensor:
    """The codec's per-channel int8 rounding, with a straight-through gradient."""
    scale = x.detach().abs().amax(dim=(0, 2, 3), keepdim=True).clamp_min(1e-12) / 127.0
    q = torch.round(x / scale).clamp(-127, 127) * scale
    return x + (q - x).detach()


def _batched(fn: Any, x: torch.Tensor, batch: int = 32) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([fn(x[i : i + batch]) for i in range(0, len(x), batch)])


def _rotate_and_prune(model: nn.Module, cut: str, prefix_out: torch.Tensor, keep: int) -> torch.Tensor:
    """Fold the principal axes of the cut's activation into projection and BatchNorm; zero all but ``keep``."""
    m: Any = model
    i = _block_index(cut)
    block = m._blocks[i]
    act = _batched(block, prefix_out)
    c = act.shape[1]
    if not 1 <= keep <= c:
        raise ConfigError(f"keep must be in [1, {c}], got {keep}")
    flat = act.permute(0, 2, 3, 1).reshape(-1, c).double()
    mean = flat.mean(0)
    cov = (flat - mean).T @ (flat - mean) / len(flat)
    _, vecs = torch.linalg.eigh(cov)
    basis = vecs.flip(1).float()  # columns: principal axes, largest variance first
    conv, bn = block._project_conv, block._bn2
    with torch.no_grad():
        std = torch.sqrt(bn.running_var + bn.eps)
        w_eff = conv.weight[:, :, 0, 0] * (bn.weight / std)[:, None]
        b_eff = bn.bias - bn.weight * bn.running_mean / std
        conv.weight.copy_((basis.T @ w_eff)[:, :, None, None])
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
        bn.weight.fill_(1.0)
        bn.bias.copy_(basis.T @ (b_eff - mean.float()))
        decoder = m._blocks[i + 1].decoder
        decoder.weight.copy_(basis[:, :, None, None])
        decoder.bias.copy_(mean.float())
    mask = torch.zeros(c, dtype=torch.bool)
    mask[:keep] = True
    _apply_mask(model, cut, mask)
    return mask


def _apply_mask(model: nn.Module, cut: str, mask: torch.Tensor) -> None:
    m: Any = model
    block = m._blocks[_block_index(cut)]
    with torch.no_grad():
        block._project_conv.weight[~mask] = 0.0
        block._bn2.weight[~mask] = 0.0
        block._bn2.bias[~mask] = 0.0


def _distil(
    model: nn.Module, cut: str, mask: torch.Tensor, h: torch.Tensor, teacher: torch.Tensor, r: DistillRecipe
) -> list[float]:
    """KL(teacher || student) on the logits; BatchNorm statistics frozen (eval mode); the mask held."""
    m: Any = model
    i = _block_index(cut)
    params = [p for b in list(m._blocks)[i : i + r.tune_blocks] for p in b.parameters()]
    opt = torch.optim.Adam(params, lr=r.lr)
    gen = torch.Generator().manual_seed(r.seed)
    steps = r.epochs * ((len(h) + r.batch - 1) // r.batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    t = r.temperature
    soft = torch.softmax(teacher / t, dim=1)
    losses = []
    model.eval()
    with torch.enable_grad():
        for epoch in range(r.epochs):
            order = torch.randperm(len(h), generator=gen)
            total = 0.0
            for s in range(0, len(h), r.batch):
                idx = order[s : s + r.batch]
                logits = _suffix(model, cut, h[idx])
                loss = nn.functional.kl_div(
                    torch.log_softmax(logits / t, dim=1), soft[idx], reduction="batchmean"
                ) * (t * t)
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                sched.step()
                _apply_mask(model, cut, mask)
                total += float(loss.detach()) * len(idx)
            losses.append(total / len(h))
            log.info("distil %s epoch %d: KL %.4f", cut, epoch + 1, losses[-1])
    return losses


def _cache_path(cut: str, recipe: DistillRecipe, frames: int) -> Any:
    from ccied_p2p.models import cache_dir

    payload = {"model": MODEL, "cut": cut, "frames": frames, **asdict(recipe)}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"{MODEL}-pruned-{key}.safetensors"


def _train_frames(step: int) -> npt.NDArray[np.uint8]:
    from ccied_p2p.video import TRAIN_CLIPS, read_clips

    return np.concatenate(list(read_clips(TRAIN_CLIPS, step=step).values()))


def lite0_split(
    cut: str = DEFAULT_CUT, recipe: DistillRecipe | None = None, prune: bool = True, retrain: bool = False
) -> SplitModel:
    """Lite0 split after ``cut`` (one of :data:`CUTS`); with ``prune``, the split layer pruned and distilled.

    The pruned split's ``channel_mask`` marks the kept channels; its tail starts with the decoder."""
    from ccied_p2p.models import _save, efficientnet_lite0

    example = torch.zeros(1, 3, 224, 224)
    node = CUTS.get(cut, cut)
    if not prune:
        return SplitModel.from_module(efficientnet_lite0(), split_at=node, example_input=example, name=MODEL)
    _block_index(cut)
    recipe = recipe or DistillRecipe()
    frames = _train_frames(recipe.frame_step)
    path = _cache_path(cut, recipe, len(frames))
    model = _restructure(efficientnet_lite0(), cut)
    if path.is_file() and not retrain:
        tensors = load_file(str(path))
        mask = tensors.pop("channel_mask").bool()
        model.load_state_dict(tensors)
    else:
        start = time.perf_counter()
        torch.manual_seed(recipe.seed)
        teacher_model = efficientnet_lite0()
        x = to_input(frames)
        teacher = _batched(teacher_model, x)
        h = _batched(lambda b: _prefix(model, cut, b), x)
        del x
        mask = _rotate_and_prune(model, cut, h, recipe.keep)
        losses = _distil(model, cut, mask, h, teacher, recipe)
        meta = {
            "recipe": json.dumps(asdict(recipe)),
            "losses": json.dumps(losses),
            "seconds": f"{time.perf_counter() - start:.1f}",
            "frames": str(len(frames)),
        }
        state = {k: v for k, v in model.state_dict().items()}
        _save(path, {**state, "channel_mask": mask.to(torch.uint8)}, meta)
    model.eval()
    split = SplitModel.from_module(model, split_at=node, example_input=example, name=MODEL)
    split.channel_mask = mask.clone()
    split.refresh_fingerprint()
    return split


def prune_summary(
    cut: str = DEFAULT_CUT,
    recipe: DistillRecipe | None = None,
    frames: int = 400,
    clip_step: int = 4,
    encoding: str | None = None,
    seed: int = 0,
    prune: bool = True,
) -> dict[str, Any]:
    """What ``ccied-p2p prune --model efficientnet-lite0`` reports for one cut and recipe.

    With ``prune`` (default encoding ``sparse-i8-lz4``: the channel mask drops the pruned channels) the split
    layer is pruned and distilled by ``recipe``; without, every channel goes in :data:`WIRE_ENCODING` (amount 0).

    Agreement and accuracy: top-1 on ``frames`` frames of the photo camera over the evaluation photos (frames
    with no object in view count for agreement only). Bytes: the split activation as sent (``encoding``,
    decoded before the tail, so agreement includes the codec) against the 224-px q90 JPEG of the same frame,
    on every ``clip_step``-th frame of the evaluation clips and on the photo frames. ``jpeg_agreement`` and
    ``jpeg_accuracy``: the unsplit model on that JPEG as a peer decodes it (what offloading the frame answers),
    on the same photo frames as ``agreement``."""
    from ccied_p2p.codec.tensor import decode_tensor, encode_tensor
    from ccied_p2p.inputs import LITE_SPEC, decode_jpeg, encode_jpeg
    from ccied_p2p.video import EVAL_CLIPS, photo_camera, photo_split, read_clips

    recipe = recipe or DistillRecipe()
    encoding = encoding or ("sparse-i8-lz4" if prune else WIRE_ENCODING)
    start = time.perf_counter()
    base = lite0_split(cut, prune=False)
    pruned = lite0_split(cut, recipe) if prune else base
    _, evaluation = photo_split()
    stream = list(photo_camera(evaluation, frames, seed=seed))
    photos = np.stack([f.image for f in stream])
    truth = np.array([f.label for f in stream])
    clips = np.concatenate(list(read_clips(EVAL_CLIPS, step=clip_step).values()))

    def wire(images: npt.NDArray[np.uint8]) -> tuple[torch.Tensor, list[int], list[int]]:
        logits, sizes, raw = [], [], []
        for i in range(0, len(images), 32):
            h = pruned.head(to_input(images[i : i + 32])).numpy()
            for row in h:
                blob = encode_tensor(row[None], encoding)
                sizes.append(len(blob))
                raw.append(len(encode_tensor(row[None], "sparse-f16-lz4")))
                logits.append(pruned.tail(torch.from_numpy(decode_tensor(blob))))
        return torch.cat(logits), sizes, raw

    before = _batched(base, to_input(photos)).argmax(1).numpy()
    photo_jpegs = [encode_jpeg(LITE_SPEC.prepare(f)) for f in photos]  # what offloading each frame sends
    offloaded = np.stack([decode_jpeg(data, LITE_SPEC) for data in photo_jpegs])
    jpeg = _batched(base, to_input(offloaded)).argmax(1).numpy()
    after_logits, photo_sizes, _photo_f16 = wire(photos)
    after = after_logits.argmax(1).numpy()
    _, clip_sizes, clip_f16 = wire(clips)
    clip_jpegs = np.array([len(encode_jpeg(f)) for f in clips], dtype=np.float64)
    unpruned = [
        len(encode_tensor(h[None], "sparse-f16-lz4"))
        for h in _batched(base.head, to_input(clips[::4])).numpy()
    ]
    labelled = truth >= 0
    c = pruned.activation_shape[0]
    keep = recipe.keep if prune else c
    return {
        "model": MODEL,
        "split": pruned.split_at,
        "cut": cut,
        "amount": 1.0 - keep / c,
        "channels": c,
        "kept_channels": keep,
        "encoding": encoding,
        "bytes_per_transfer": float(np.mean(clip_sizes)),
        "jpeg_bytes": float(np.mean(clip_jpegs)),
        # Per frame: the activation against that frame's own JPEG (small on a static street, large close up).
        "jpeg_ratio_median": float(np.median(np.array(clip_sizes) / clip_jpegs)),
        "jpeg_ratio_at_most_half": float(np.mean(np.array(clip_sizes) <= 0.5 * clip_jpegs)),
        "bytes_per_transfer_f16": float(np.mean(clip_f16)),
        "unpruned_bytes": float(np.mean(unpruned)),
        "photo_bytes_per_transfer": float(np.mean(photo_sizes)),
        "photo_jpeg_bytes": float(np.mean([len(data) for data in photo_jpegs])),
        "bytes_frames": f"every {clip_step}th frame of {', '.join(EVAL_CLIPS)} ({len(clips)} frames)",
        "agreement": float(np.mean(after == before)),
        "accuracy_before": float(np.mean(before[labelled] == truth[labelled])),
        "accuracy_after": float(np.mean(after[labelled] == truth[labelled])),
        "jpeg_agreement": float(np.mean(jpeg == before)),
        "jpeg_accuracy": float(np.mean(jpeg[labelled] == truth[labelled])),
        "frames": frames,
        "seed": seed,
        "labelled_frames": int(labelled.sum()),
        "recipe": asdict(recipe) if prune else None,
        "fingerprint": pruned.fingerprint,
        "seconds": time.perf_counter() - start,
    }


def _macs_by_layer(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates of each convolution and linear layer (by name) in one forward of ``model``."""
    out: dict[str, int] = {}

    def counter(name: str) -> Any:
        def count(layer: nn.Module, _inputs: Any, y: torch.Tensor) -> None:
            if isinstance(layer, nn.Conv2d):
                k = layer.kernel_size[0] * layer.kernel_size[1] * layer.in_channels // layer.groups
                out[name] = out.get(name, 0) + y.numel() * k
            elif isinstance(layer, nn.Linear):
                out[name] = out.get(name, 0) + y.numel() * layer.in_features

        return count

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    hooks = [m.register_forward_hook(counter(n)) for n, m in layers]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return out


def _head_macs(macs: dict[str, int], cut: str) -> int:
    """The stem's and blocks ``0..cut``'s share of :func:`_macs_by_layer`."""
    i = _block_index(cut)
    return sum(
        v
        for name, v in macs.items()
        if name.startswith("_conv_stem") or (name.startswith("_blocks.") and int(name.split(".")[1]) <= i)
    )


def cut_table(
    cuts: tuple[str, ...] = tuple(CUTS),
    frames: int = 400,
    clip_step: int = 4,
    encodings: tuple[str, ...] = ("sparse-f16-lz4", "dense-i8", WIRE_ENCODING),
    repeats: int = 31,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Per cut of the unpruned Lite0: head share, bytes per encoding against the JPEG, top-1 agreement.

    Head share: ``head_share`` the median time of the head over the median time of the whole forward, one frame
    at a time on the caller's torch threads, ``repeats`` of each taken in turn (so both see the same load on the
    machine); ``head_macs_share`` the same from counted multiply-accumulates (exact, load-free). Bytes: mean over every ``clip_step``-th frame of the evaluation clips.
    Agreement and accuracy: the tail run on the decoded activation, over ``frames`` photo-camera frames on the
    evaluation photos, against the unsplit model's top-1 (accuracy on frames with an object in view)."""
    from ccied_p2p.codec.tensor import decode_tensor, encode_tensor
    from ccied_p2p.inputs import encode_jpeg
    from ccied_p2p.models import efficientnet_lite0
    from ccied_p2p.video import EVAL_CLIPS, photo_camera, photo_split, read_clips

    _, evaluation = photo_split()
    stream = list(photo_camera(evaluation, frames, seed=seed))
    photos = to_input(np.stack([f.image for f in stream]))
    truth = np.array([f.label for f in stream])
    labelled = truth >= 0
    clip_frames = np.concatenate(list(read_clips(EVAL_CLIPS, step=clip_step).values()))
    clips = to_input(clip_frames)
    jpeg = float(np.mean([len(encode_jpeg(f)) for f in clip_frames]))
    whole = efficientnet_lite0().eval()
    reference = _batched(whole, photos).argmax(1).numpy()

    def median_ms(fns: tuple[Any, Any], x: torch.Tensor) -> tuple[float, float]:
        times: tuple[list[float], list[float]] = ([], [])
        with torch.inference_mode():
            for fn in fns:
                fn(x)
            for _ in range(repeats):
                for fn, out in zip(fns, times, strict=True):
                    start = time.perf_counter()
                    fn(x)
                    out.append(time.perf_counter() - start)
        return 1000 * float(np.median(times[0])), 1000 * float(np.median(times[1]))

    macs = _macs_by_layer(whole, photos[:1])
    rows = []
    for cut in cuts:
        split = lite0_split(cut, prune=False)
        head_ms, full_ms = median_ms((split.head, whole), photos[:1])
        head_macs, full_macs = _head_macs(macs, cut), sum(macs.values())
        act_photos = _batched(split.head, photos).numpy()
        act_clips = _batched(split.head, clips).numpy()
        row: dict[str, Any] = {
            "model": MODEL,
            "cut": cut,
            "split": split.split_at,
            "shape": list(split.activation_shape),
            "head_ms": head_ms,
            "full_ms": full_ms,
            "head_share": head_ms / full_ms,
            "head_macs": head_macs,
            "full_macs": full_macs,
            "head_macs_share": head_macs / full_macs,
            "jpeg_bytes": jpeg,
            "bytes": {},
            "agreement": {},
            "accuracy": {},
        }
        for enc in encodings:
            row["bytes"][enc] = float(np.mean([len(encode_tensor(a[None], enc)) for a in act_clips]))
            decoded = np.concatenate([decode_tensor(encode_tensor(a[None], enc)) for a in act_photos])
            top1 = _batched(split.tail, torch.from_numpy(decoded)).argmax(1).numpy()
            row["agreement"][enc] = float(np.mean(top1 == reference))
            row["accuracy"][enc] = float(np.mean(top1[labelled] == truth[labelled]))
        rows.append(row)
    for row in rows:
        row["accuracy_unsplit"] = float(np.mean(reference[labelled] == truth[labelled]))
        row["frames"] = frames
        row["labelled_frames"] = int(labelled.sum())
        row["bytes_frames"] = (
            f"every {clip_step}th frame of {', '.join(EVAL_CLIPS)} ({len(clip_frames)} frames)"
        )
    return rows
