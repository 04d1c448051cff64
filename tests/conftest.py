"""Shared pytest setup: tests run on the CPU, with deterministic settings."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")


import helpers  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> helpers.SmokeRun:
    """One CLI training of ``experiments/ddpm.py:smoke``, shared by all tests and xdist workers.

    Treat the workdir as read-only: tests that change it work on a ``helpers.copy_workdir`` copy.
    """
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return helpers.train_smoke(tmp_path_factory.mktemp("smoke_ddpm"))
    # Under pytest-xdist every worker has its own basetemp; their parent is shared by the run.
    root = tmp_path_factory.getbasetemp().parent / "smoke_ddpm"
    root.mkdir(exist_ok=True)
    with helpers.file_lock(root / "lock"):
        return helpers.train_smoke(root)


@pytest.fixture(scope="session")
def trained_workdir(smoke_run):
    """The workdir of ``smoke_run``; fails the test if that training failed."""
    assert smoke_run.returncode == 0, f"smoke training failed:\n{smoke_run.stderr[-4000:]}"
    return smoke_run.workdir
