"""Orbax checkpoints of the training state plus JSON metadata (data position, timings).

Only arrays and JSON are written: restoring never unpickles or runs code from the files.
"""

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging


class NoCheckpointError(FileNotFoundError):
    """Raised when a workdir holds no checkpoint to load."""


class Checkpointer:
    """Periodic, asynchronous saves with keep-last-N and restore of the latest good step."""

    def __init__(self, directory: str | Path, max_to_keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=async_save,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts saving ``state`` and ``meta`` (JSON) at ``step``; returns before it is done."""
        self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )

    def restore(
        self, abstract_state: Any, step: int | None = None, delete_unreadable: bool = False
    ) -> tuple[Any, dict, int]:
        """Restores ``step`` (default: the newest one that reads back cleanly).

        Args:
          abstract_state: a pytree of ``jax.ShapeDtypeStruct`` (with shardings) or arrays that
            gives the structure, dtypes and placement to restore into.
          step: a specific step; if None, the newest restorable step, falling back to older ones
            with a warning when the newest is unreadable.
          delete_unreadable: delete newer unreadable steps after falling back (training does,
            so that it can save those steps again).

        Returns:
          ``(state, meta, step)``.
        """
        steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            raise NoCheckpointError(f"No checkpoint found in {self.directory}.")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        errors = []
        for s in steps:
            try:
                restored = self.manager.restore(
                    s,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                    ),
                )
            except Exception as e:  # noqa: BLE001 (any read failure means: try an older step)
                errors.append(f"step {s}: {type(e).__name__}: {e}")
                logging.warning("Checkpoint at step %d is unreadable (%s); trying older.", s, e)
                continue
            for bad in steps[: steps.index(s)] if delete_unreadable else ():
                # Drop unreadable newer steps so that training can save those steps again.
                logging.warning("Deleting unreadable checkpoint step %d.", bad)
                self.manager.delete(bad)
            return restored["state"], dict(restored["meta"] or {}), s
        raise NoCheckpointError(
            f"No readable checkpoint in {self.directory}:\n  " + "\n  ".join(errors)
        )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
