"""A run's logs as training goes: TensorBoard scalars and image grids, and ``metrics.jsonl`` (main process only).

* ``train/<metric>`` scalars for every epoch's training metrics, ``eval/<score>`` scalars and an ``eval/samples``
  image grid for every held-out evaluation, all against ``global_step`` (fresh samples seen);
* ``generalisation/<score>`` scalars for the second held-out set, evaluated at the end of the run;
* ``metrics.jsonl``: one JSON line per epoch, written and flushed as the epoch ends (NaN/inf as null).
"""

from __future__ import annotations

import json
from pathlib import Path

from agents.training.evaluation import Evaluation, grid_rows
from agents.training.run_folder import METRICS_FILE, json_safe


class RunLog:
    """The TensorBoard writer and ``metrics.jsonl`` of one run folder.

    ``continue_after``: the global step a resumed run continues from; TensorBoard events logged after it (by the
    interrupted session) are purged and ``metrics.jsonl`` is appended to (the caller trimmed it). ``None``: a new
    run, ``metrics.jsonl`` starts empty.
    """

    def __init__(self, output_dir: str | Path, continue_after: int | None = None):
        self.output_dir = Path(output_dir)
        from torch.utils.tensorboard import SummaryWriter  # imported here: tensorboard's import is heavy

        purge_step = None if continue_after is None else continue_after + 1
        self.writer = SummaryWriter(log_dir=str(self.output_dir), purge_step=purge_step)
        self.metrics_file = (self.output_dir / METRICS_FILE).open("w" if continue_after is None else "a")

    def log_epoch(self, record: dict[str, float], metrics: dict[str, float], step: int) -> None:
        """``metrics`` as ``train/`` scalars at ``step``; ``record`` (the epoch's full line) to ``metrics.jsonl``."""
        for key, value in metrics.items():
            self.writer.add_scalar(f"train/{key}", value, step)
        self.metrics_file.write(json.dumps(json_safe(record)) + "\n")
        self.metrics_file.flush()
        self.writer.flush()

    def log_evaluation(self, evaluation: Evaluation, scores: dict[str, float], step: int) -> None:
        """Held-out ``scores`` (by name: ``reward``, ``gold``, ...) as ``eval/`` scalars and an image grid of the
        evaluation's samples (:func:`~agents.training.evaluation.grid_rows`) at ``step``."""
        from torchvision.utils import make_grid  # torchvision takes seconds to import: only where it is used

        self._add_scalars("eval", scores, step)
        rows = grid_rows(len(evaluation.prompts))
        self.writer.add_image("eval/samples", make_grid(evaluation.images[rows], nrow=len(rows), padding=1), step)
        self.writer.flush()

    def log_scalars(self, prefix: str, scores: dict[str, float], step: int) -> None:
        """``scores`` as ``<prefix>/<name>`` scalars at ``step`` (e.g. the generalisation set's, at the end)."""
        self._add_scalars(prefix, scores, step)
        self.writer.flush()

    def _add_scalars(self, prefix: str, scores: dict[str, float], step: int) -> None:
        for key, value in scores.items():
            self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        self.metrics_file.close()
        self.writer.close()


__all__ = ["RunLog"]
