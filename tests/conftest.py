"""Shared pytest setup: tests run on the CPU, with deterministic settings."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
