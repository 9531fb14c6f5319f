"""Benchmarks behind `ccied-p2p bench NAME`: each module has add_arguments, run and render."""
