"""What a run leaves to read while and after it trains: CSV logs and TensorBoard events.

Only the main rank logs (`enabled`); TensorBoard is optional, the CSV files are always written.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


class RunLogger:
    """CSV logs (`train_log.csv`, `eval_log.csv`) and TensorBoard events when installed."""

    def __init__(self, output_dir: Path, enabled: bool) -> None:
        self.enabled, self.output_dir = enabled, output_dir
        self.writer: Any = None
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional: CSV logs are always written
            SummaryWriter = None
        if SummaryWriter is not None:
            self.writer = SummaryWriter(str(output_dir / "tensorboard"))

    def _append(self, name: str, row: dict[str, object]) -> None:
        path = self.output_dir / name
        new = not path.exists()
        with open(path, "a", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def train(self, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._append("train_log.csv", row)
        if self.writer is not None:
            for key in ("loss", "lr", "samples_per_s", "skipped_steps"):
                self.writer.add_scalar(f"train/{key}", row[key], int(row["step"]))

    def evaluation(self, step: int, results: dict[str, dict[str, object]]) -> None:
        if not self.enabled:
            return
        for name, result in results.items():
            self._append(
                "eval_log.csv",
                {
                    "step": step,
                    "set": name,
                    "accuracy": result["accuracy"],
                    "accuracy_std": result["accuracy_std"],
                    "threshold_at_target_far": result["threshold_at_target_far"],
                },
            )
            if self.writer is not None:
                self.writer.add_scalar(f"eval/{name}/accuracy", result["accuracy"], step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
