"""Shared pytest setup: tests run on the CPU, with deterministic settings."""

import atexit
import os
import shutil
import tempfile

import helpers  # imports no JAX, so the flags below still reach it

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = helpers.TEST_XLA_FLAGS
# One persistent compilation cache for the whole session: the xdist workers and the CLI
# subprocesses they start inherit it, so a training step compiled by one test (a smoke run, its
# resume, its --mode=sample) is read back by the next instead of compiled again.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxgen-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
# Shared runs ("shared:<experiment>", e.g. the evaluation CLIP) go to a session folder, never
# the user's cache.
if "JAXGEN_SHARED_DIR" not in os.environ:
    os.environ["JAXGEN_SHARED_DIR"] = tempfile.mkdtemp(prefix="jaxgen-shared-")
    atexit.register(shutil.rmtree, os.environ["JAXGEN_SHARED_DIR"], ignore_errors=True)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> helpers.SmokeRun:
    """One CLI training of ``experiments/ddpm.py:smoke``, shared by all tests and xdist workers.

    Treat the workdir as read-only: tests that change it work on a ``helpers.copy_workdir`` copy.
    """
    return helpers.shared_config_run(tmp_path_factory, helpers.SMOKE_CONFIG)


@pytest.fixture(scope="session")
def trained_workdir(smoke_run):
    """The workdir of ``smoke_run``; fails the test if that training failed."""
    assert smoke_run.returncode == 0, f"smoke training failed:\n{smoke_run.stderr[-4000:]}"
    return smoke_run.workdir


@pytest.fixture(scope="session")
def reference_workdir(tmp_path_factory):
    """The uninterrupted 1-device, 1-process run that the scaling and fault tests compare with."""
    import scale_helpers

    run = helpers.shared_smoke_run(tmp_path_factory, "scale_reference", *scale_helpers.RUN_ARGS)
    assert run.returncode == 0, f"reference training failed:\n{run.stderr[-4000:]}"
    return run.workdir


@pytest.fixture(scope="session")
def clip_smoke_workdir(tmp_path_factory):
    """One CLI training of ``experiments/clip.py:smoke``, shared like ``smoke_run``."""
    run = helpers.shared_config_run(tmp_path_factory, "--config=experiments/clip.py:smoke")
    assert run.returncode == 0, f"CLIP smoke training failed:\n{run.stderr[-4000:]}"
    return run.workdir
