"""The cache's false-hit budget on images calibration never saw: Fashion-MNIST, LeNet pruned 75% (slow).

Each case is one random halving of the test images: ``presets.calibrate`` gets one half, and six camera
streams drawn like its own (1 000 requests each, pool 500) are served from the other half.
``ccied-p2p bench calibration`` runs the same halvings and adds the streams without repeats.
"""

from __future__ import annotations

import argparse

import pytest
import torch

from ccied_p2p import models
from ccied_p2p.bench.calibration import add_arguments, halving
from ccied_p2p.datasets import Dataset
from ccied_p2p.split import SplitModel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lenet(fashion: Dataset) -> SplitModel:
    return models.reference_split("lenet", fashion, amount=0.75, progress=False)


@pytest.mark.parametrize("seed", range(5))
def test_false_hits_stay_within_budget_on_the_unseen_half(
    fashion: Dataset, lenet: SplitModel, seed: int
) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    with torch.inference_mode():
        result = halving(lenet, fashion, seed, args, once=False)
    assert result["calibration"]["certified"] >= 1
    camera = result["camera"]
    assert camera["requests"] == 6 * 1000
    assert camera["false_hit_rate"] <= args.budget, f"halving {seed}: {camera}"
    assert camera["hit_rate"] >= 0.2
