"""Benchmarks of diffusion-gym's agents: `python benchmarks/run.py --help`."""
