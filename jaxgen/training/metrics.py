"""Metrics to TensorBoard and a JSONL file; only process 0 writes."""

import json
import time
from pathlib import Path

import jax
import numpy as np


class MetricWriter:
    """Writes scalars to ``<workdir>/tb`` (TensorBoard) and ``<workdir>/<jsonl_name>``."""

    def __init__(self, workdir: str | Path, jsonl_name: str = "metrics.jsonl"):
        self.enabled = jax.process_index() == 0
        self.workdir = Path(workdir)
        self._tb = None
        self._jsonl = None
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
