"""Metrics to TensorBoard and a JSONL file; only process 0 writes."""

import json
import time
from pathlib import Path

import jax
import numpy as np


class MetricWriter:
    """Writes scalars to ``<workdir>/tb`` (TensorBoard) and ``<workdir>/<jsonl_name>``."""

    def __init__(
        self, workdir: str | Path, jsonl_name: str = "metrics.jsonl", resume_step: int = 0
    ):
        """Opens the writers.

        Args:
          workdir: the run directory.
          jsonl_name: file name of the JSONL log inside ``workdir``.
          resume_step: the step training resumes from; JSONL records after it (written before a
            crash, past the last checkpoint) are dropped so that the log has each step once.
        """
        self.enabled = jax.process_index() == 0
        self.workdir = Path(workdir)
        self._tb = None
        self._jsonl = None
        path = self.workdir / jsonl_name
        if self.enabled and path.exists():
            kept = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            path.write_text("".join(line + "\n" for line in kept))
        if self.enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.workdir / "tb"))
            self._jsonl = open(self.workdir / jsonl_name, "a")  # noqa: SIM115 (closed in close())

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        for k, v in clean.items():
            self._tb.add_scalar(k, v, step)
        self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **clean}) + "\n")
        self._jsonl.flush()

    def write_image(self, step: int, name: str, image: np.ndarray) -> None:
        """Adds a uint8 ``[H, W, 3]`` image to TensorBoard."""
        if self.enabled:
            self._tb.add_image(name, np.asarray(image), step, dataformats="HWC")

    def flush(self) -> None:
        if self.enabled:
            self._tb.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
