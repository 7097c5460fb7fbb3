"""The training harness: :class:`~agents.training.trainer.Trainer` runs one agent and writes a run folder.

* ``trainer`` (the epoch loop, resume, callbacks), ``evaluation`` (held-out scores on fixed seeds), ``run_folder``
  (``run.json``, ``results.json``, ``metrics.jsonl``), ``run_log`` (TensorBoard and the metrics file),
  ``run_lock`` (one writer per folder), ``plots`` (a run's figures).

It uses the algorithms (:mod:`agents.algorithms`) and the shared ground (``agents.config``, ``agents.checkpoint``,
``agents.distributed``, ``agents.registry``); the experiments (:mod:`agents.experiments`) use it.
"""
