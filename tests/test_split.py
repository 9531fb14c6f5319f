from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from ccied_p2p import models
from ccied_p2p.errors import SplitError
from ccied_p2p.split import SplitModel, candidates


def _untrained(name: str) -> nn.Module:
    torch.manual_seed(0)
    m = models.build(name)
    # Non-trivial BatchNorm statistics so that a wrong cut would show.
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            assert mod.running_mean is not None
            assert mod.running_var is not None
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.mark.parametrize("name", models.NAMES)
def test_every_candidate_split_is_exact(name: str) -> None:
    net = _untrained(name)
    x = torch.randn(8, 1, 28, 28)
    with torch.inference_mode():
        want = net(x)
    for split_at in models.SPLIT_POINTS[name]:
        split = SplitModel.from_module(net, split_at=split_at, example_input=x[:1])
        assert torch.allclose(split.tail(split.head(x)), want, atol=1e-5)
    # Every valid cut, not just the named ones.
    cuts = candidates(net)
    assert set(models.SPLIT_POINTS[name]) <= set(cuts)
    for split_at in cuts:
        split = SplitModel.from_module(net, split_at=split_at, example_input=x[:1])
        assert torch.allclose(split(x), want, atol=1e-5), split_at


def test_sequential_by_index_and_name() -> None:
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)).eval()
    x = torch.randn(3, 1, 28, 28)
    by_index = SplitModel.from_module(seq, split_at=1, example_input=x[:1])
    by_name = SplitModel.from_module(seq, split_at="1", example_input=x[:1])
    assert by_index.activation_shape == (4, 26, 26)
    assert by_index.fingerprint == by_name.fingerprint
    assert torch.allclose(by_index(x), seq(x), atol=1e-6)
    assert SplitModel.from_module(seq, split_at=-2, example_input=x[:1]).split_at == "2"
    with pytest.raises(SplitError, match="out of range"):
        SplitModel.from_module(seq, split_at=3, example_input=x[:1])


class _Skip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        out: torch.Tensor = self.b(y) + x
        return out


def test_cut_across_a_skip_is_refused() -> None:
    net = _Skip().eval()
    with pytest.raises(SplitError, match="skip"):
        SplitModel.from_module(net, split_at="a", example_input=torch.randn(1, 4))
    assert "a" not in candidates(net)
    with pytest.raises(SplitError, match="no node named"):
        SplitModel.from_module(net, split_at="nope", example_input=torch.randn(1, 4))


def test_efficientnet_lite0_every_cut_is_exact() -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    net = models.efficientnet_lite0()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        want = net(x)
    cuts = candidates(net)
    assert len(cuts) > 50  # block boundaries and the layers inside the stem and head
    for split_at in cuts:
        split = SplitModel.from_module(net, split_at=split_at, example_input=x[:1])
        assert torch.allclose(split(x), want, atol=1e-5), split_at


def test_profile_covers_every_layer() -> None:
    net = _untrained("vgg")
    split = SplitModel.from_module(net, split_at="features.7", example_input=torch.randn(1, 1, 28, 28))
    prof = split.profile(repeats=3)
    names = [layer.name for layer in prof.layers]
    assert names[0] == "features.0"
    assert "classifier.5" in names
    assert {layer.part for layer in prof.layers} == {"head", "tail"}
    conv0 = prof.layers[0]
    assert conv0.macs == 32 * 28 * 28 * 9
    assert conv0.params == 32 * 9
    assert prof.activation_bytes == 64 * 7 * 7 * 4
    assert prof.head_macs + prof.tail_macs == sum(layer.macs for layer in prof.layers)
    assert all(layer.latency_ms >= 0 for layer in prof.layers)
    assert "split" in prof.table()


def test_fingerprint_changes_with_weights_split_and_mask() -> None:
    net = _untrained("lenet")
    x = torch.randn(1, 1, 28, 28)
    a = SplitModel.from_module(net, split_at="features.3", example_input=x)
    b = SplitModel.from_module(net, split_at="features.3", example_input=x)
    assert a.fingerprint == b.fingerprint
    assert SplitModel.from_module(net, split_at="features.7", example_input=x).fingerprint != a.fingerprint
    b.channel_mask = torch.ones(6, dtype=torch.bool)
    b.refresh_fingerprint()
    assert b.fingerprint != a.fingerprint
    with torch.no_grad():
        weight = net.get_submodule("classifier.1").weight
        assert isinstance(weight, torch.Tensor)
        weight[0, 0] += 1e-3
    assert SplitModel.from_module(net, split_at="features.3", example_input=x).fingerprint != a.fingerprint


_FP_SCRIPT = """
import torch
from ccied_p2p import models
from ccied_p2p.split import SplitModel
from safetensors.torch import load_file
net = models.build("lenet")
net.load_state_dict(load_file({path!r}))
print(SplitModel.from_module(net.eval(), "features.3", torch.zeros(1, 1, 28, 28)).fingerprint)
"""


def test_fingerprint_is_stable_across_processes(tmp_path: object) -> None:
    from pathlib import Path

    from safetensors.torch import save_file

    path = Path(str(tmp_path)) / "w.safetensors"
    net = _untrained("lenet")
    save_file(net.state_dict(), str(path))
    outs = {
        subprocess.run(
            [sys.executable, "-c", _FP_SCRIPT.format(path=str(path))],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for _ in range(2)
    }
    local = SplitModel.from_module(net, "features.3", torch.zeros(1, 1, 28, 28)).fingerprint
    assert outs == {local}
