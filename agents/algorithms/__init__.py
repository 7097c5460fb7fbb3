"""The algorithms: one file per algorithm, read top to bottom, over the shared parts they build on.

* ``base``: the :class:`~agents.algorithms.base.Agent`'s epoch (sample, score, update) that every algorithm fills in;
* ``buffers`` (trajectories and step batches), ``rollout`` (episodes through the env), ``policy`` (the LoRA
  diffusion policy and its per-step log-probabilities), ``math`` (the shared math as small pure functions);
* ``reinforce``, ``ddpo``, ``dpok``, ``loop``, ``rwr``, ``nft``: the algorithms; ``herd``: the hindsight
  relabeler that wraps any of them.

Nothing here knows the training harness (:mod:`agents.training`) or the experiments (:mod:`agents.experiments`).
"""
