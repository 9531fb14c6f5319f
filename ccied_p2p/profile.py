"""What :meth:`~ccied_p2p.split.SplitModel.profile` measured, per layer and per part: plain data, no torch.

It lives apart from :mod:`ccied_p2p.split` so that the pure planner (:mod:`ccied_p2p.planner`) can read a
profile without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LayerProfile", "SplitProfile"]


@dataclass(frozen=True)
class LayerProfile:
    name: str
    op: str
    part: str  # "head" or "tail"
    latency_ms: float
    shape: tuple[int, ...]
    bytes: int
    params: int
    macs: int


@dataclass(frozen=True)
class SplitProfile:
    layers: tuple[LayerProfile, ...]
    split_at: str
    head_ms: float
    tail_ms: float
    head_macs: int
    tail_macs: int
    activation_bytes: int
    input_bytes: int

    def table(self) -> str:
        """A fixed-width text table, one row per layer, the split marked."""
        rows = [
            f"{'layer':<28} {'part':<4} {'op':<14} {'ms':>8} {'shape':<20} {'bytes':>10} {'params':>9} {'MACs':>11}"
        ]
        for layer in self.layers:
            shape = "x".join(map(str, layer.shape))
            rows.append(
                f"{layer.name[:28]:<28} {layer.part:<4} {layer.op[:14]:<14} {layer.latency_ms:8.4f} {shape:<20} "
                f"{layer.bytes:>10} {layer.params:>9} {layer.macs:>11}"
            )
            if layer.name == self.split_at:
                rows.append("-" * 28 + " split " + "-" * 80)
        rows.append(
            f"head {self.head_ms:.3f} ms / {self.head_macs} MACs; tail {self.tail_ms:.3f} ms / {self.tail_macs} "
            f"MACs; activation {self.activation_bytes} B vs input {self.input_bytes} B"
        )
        return "\n".join(rows)
