"""Embed a CCIED node in an asyncio application: two nodes in one process, talking over loopback.

Run: python demos/embed.py
"""

from __future__ import annotations

import asyncio

import torch

from ccied_p2p import NetworkConfig, Node, NodeConfig, datasets
from ccied_p2p.presets import calibrate, reference_parts


async def main() -> None:
    torch.set_num_threads(1)
    data = datasets.load()  # the best data set present
    split = reference_parts("lenet", data, amount=0.5)  # trained and pruned once, then cached
    settings, _ = calibrate(split, data)  # a cache threshold with at most 1% false hits
    secret = "correct horse battery staple"
    server_config = NodeConfig(name="edge-server", secret=secret, network=NetworkConfig(mdns=False))
    async with Node(split, server_config) as server:
        config = NodeConfig(
            name="camera",
            secret=secret,
            network=NetworkConfig(mdns=False, seeds=[server.address]),
            cache=settings.config(),  # the calibrated answer rule, a CacheConfig
        )
        async with Node(split, config) as camera:
            await camera.wait_for_peers(1)
            for i in range(5):
                result = await camera.infer(data.test_x[i])
                print(
                    f"label {result.label} (true {int(data.test_y[i])}) from {result.peer or result.kind} "
                    f"in {result.latency * 1000:.2f} ms"
                )
            again = await camera.infer(data.test_x[0])  # the same input again: answered by the cache
            print("again:", again.label, again.kind)
            print(camera.stats())


if __name__ == "__main__":
    asyncio.run(main())
