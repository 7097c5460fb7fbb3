"""Offline tooling of the Shapes world: what builds and measures the committed world, never what a run imports.

* :mod:`diffusion_gym.shapes.offline.train`: ``python -m diffusion_gym.shapes.offline.train``, trains the
  world's miniature Stable Diffusion and its ``shapes-clip`` proxy from scratch (about 40 min on 2 CPU cores);
* :mod:`diffusion_gym.shapes.offline.evaluate`: ``python -m diffusion_gym.shapes.offline.evaluate``, measures
  the world (VAE fidelity, the base model's held-out gold score, the proxy against gold).

The env, the rewards and the agents do not import this package (a test checks it in a fresh process).
"""
