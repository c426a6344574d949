"""A CSV logger whose file survives a resumed run.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it opens its directory again, so
re-running a command (which resumes the run) would erase the losses of every step before the
checkpoint. This one keeps the file and continues it: rows of the steps from the resumed step on
(logged by the interrupted process after its last checkpoint, and about to be logged again) are
dropped, everything before stays.
"""

from __future__ import annotations

import csv
import logging
import os

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

log = logging.getLogger(__name__)


class _ContinuingWriter(ExperimentWriter):
    """Lightning's writer, minus the deletion of an existing ``metrics.csv``; its columns are kept."""

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            self.metrics_keys = sorted(csv.DictReader(file).fieldnames or [])

    def drop_rows_from(self, step: int) -> int:
        """Remove the rows of steps ``>= step`` from the file; returns how many were removed."""
        if not self._fs.isfile(self.metrics_file_path):
            return 0
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            fieldnames = reader.fieldnames or self.metrics_keys
            rows = list(reader)
        kept = [row for row in rows if not row.get("step") or int(float(row["step"])) < step]
        if len(kept) == len(rows):
            return 0
        tmp = f"{self.metrics_file_path}.tmp-{os.getpid()}"
        with self._fs.open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, self.metrics_file_path)
        return len(rows) - len(kept)


class ContinuingCSVLogger(CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` that continues a resumed run's ``metrics.csv``."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _ContinuingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment

    def resume_at(self, step: int) -> None:
        """Forget the rows of steps ``>= step``: the resumed run logs them again."""
        dropped = self.experiment.drop_rows_from(step)
        if dropped:
            log.info("metrics.csv: dropped %d rows of steps >= %d, which the resumed run logs again", dropped, step)
