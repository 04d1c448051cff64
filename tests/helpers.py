"""Shared helpers for the end-to-end tests: run the CLI, share one trained smoke workdir."""

import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = "--config=experiments/ddpm.py:smoke"
# The tests' tiny models spend most of their time in XLA's compiler: at LLVM's optimisation level
# 1 instead of the default 2, a smoke DDPM run takes 30 s instead of 40 s (conftest.py sets this
# for the test processes, ``cli_env`` for the CLI and benchmark subprocesses). Not level 0: it
# turned the CLIP smoke run's gradients into NaN at its third step.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=1"


def cli_env() -> dict[str, str]:
    """The environment for a subprocess: CPU only, the tests' XLA flags, quiet TensorFlow."""
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = TEST_XLA_FLAGS
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_cli(
    *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Runs ``python -m jaxgen.main ARGS`` from the repository root; never raises on failure.

    ``env`` adds variables to ``cli_env()`` (e.g. ``XLA_FLAGS`` for fake devices).
    """
    return subprocess.run(
        [sys.executable, "-m", "jaxgen.main", *args],
        cwd=REPO_ROOT,
        env={**cli_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def parse_cross_entropy(logits, labels) -> float:
    """Mean over fields of the mean softmax cross-entropy, in float64 numpy: ``logits`` one
    ``[B, k]`` per field, ``labels`` int ``[B, fields]`` (the reference for ``parse_loss``)."""
    import numpy as np

    per_field = []
    for i, lg in enumerate(logits):
        lg = np.asarray(lg, np.float64)
        lg = lg - lg.max(-1, keepdims=True)
        logp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
        per_field.append(-np.mean(logp[np.arange(len(lg)), np.asarray(labels)[:, i]]))
    return float(np.mean(per_field))


def experiment_config(name: str, arg: str | None = None):
    """``get_config(arg)`` of ``experiments/<name>.py``."""
    from jaxgen.config import load_experiment

    return load_experiment(name, arg)


def pipeline_from(name: str, arg: str | None = None, **overrides):
    """``(pipeline, config)`` of ``experiments/<name>.py:<arg>`` with dotted-key overrides
    (``**{"model.text_init": path}``; an unknown key is an error naming the valid ones)."""
    from jaxgen.config import resolve_key
    from jaxgen.training.workdir import build_pipeline

    config = experiment_config(name, arg)
    for key, value in overrides.items():
        parent, leaf = resolve_key(config, key)
        parent[leaf] = value
    return build_pipeline(config), config


def train_batch(config, n: int = 8, keys=("image", "tokens")) -> dict[str, np.ndarray]:
    """The first ``n`` training examples of ``config.data``, stacked, for ``keys``."""
    from jaxgen import data as data_lib

    source = data_lib.build_source(config.data, "train")
    return {k: np.stack([source[i][k] for i in range(n)]) for k in keys}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def copy_workdir(src: Path, dst: Path) -> Path:
    """A private copy of a trained workdir, for tests that change it."""
    shutil.copytree(src, dst)
    return dst


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock between processes (pytest-xdist workers) on ``path``."""
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclasses.dataclass(frozen=True)
class SmokeRun:
    """A workdir trained by ``python -m jaxgen.main --config=experiments/ddpm.py:smoke``."""

    workdir: Path
    returncode: int
    stdout: str
    stderr: str


def train_smoke(root: Path, *args: str, config: str = SMOKE_CONFIG) -> SmokeRun:
    """Trains a smoke config (plus ``args``) into ``root/workdir`` once; later calls reuse it."""
    workdir = root / "workdir"
    done = root / "result.json"
    if not done.exists():
        if workdir.exists():  # A half-written run from an interrupted attempt.
            shutil.rmtree(workdir)
        proc = run_cli(config, f"--workdir={workdir}", *args, timeout=1200)
        done.write_text(
            json.dumps(dict(returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr))
        )
    result = json.loads(done.read_text())
    return SmokeRun(workdir=workdir, **result)


def shared_smoke_run(
    tmp_path_factory, name: str, *args: str, config: str = SMOKE_CONFIG
) -> SmokeRun:
    """``train_smoke`` once per test session, shared by the pytest-xdist workers through a lock."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return train_smoke(tmp_path_factory.mktemp(name), *args, config=config)
    # Under pytest-xdist every worker has its own basetemp; their parent is shared by the run.
    root = tmp_path_factory.getbasetemp().parent / name
    root.mkdir(exist_ok=True)
    with file_lock(root / "lock"):
        return train_smoke(root, *args, config=config)


def shared_config_run(tmp_path_factory, config: str) -> SmokeRun:
    """`shared_smoke_run` of ``config`` alone (``--config=experiments/<name>.py:<variant>``, a
    variant with ``smoke`` in it), named after the family and variant: every test that trains
    that smoke config as it is shares one run."""
    match = re.fullmatch(r"--config=experiments/(\w+)\.py:([\w,]+)", config)
    if match is None or "smoke" not in match.group(2).split(","):
        raise ValueError(f"not a smoke config of experiments/: {config!r}")
    options = [o for o in match.group(2).split(",") if o != "smoke"]
    return shared_smoke_run(
        tmp_path_factory, "_".join(["smoke", match.group(1), *options]), config=config
    )


def fake_vgg_file(path, arch: str = "vgg16") -> dict:
    """A VGG weight file in the published ``.npz`` layout with small random weights (and a dense
    layer the loader ignores); returns its arrays."""
    from jaxgen.models import vgg

    rng = np.random.default_rng(0)
    arrays = {
        k: (rng.normal(size=s) * 0.05).astype(np.float32)
        for k, s in vgg.expected_shapes(arch).items()
    }
    arrays["fc6_W"] = np.zeros((2, 2), np.float32)  # present in the published file, ignored
    np.savez(path, **arrays)
    return arrays


def torchvision_vgg_arrays(arch: str = "vgg16", seed: int = 0) -> dict:
    """torchvision's ``vgg16`` / ``vgg19`` state dict as numpy arrays with small random weights:
    ``features.{idx}.weight`` ``[Cout, Cin, 3, 3]`` and ``features.{idx}.bias``, and a dense
    layer the loader ignores."""
    from jaxgen.models import vgg

    # The convolutions' places in torchvision's vgg16().features / vgg19().features.
    convs = {
        "vgg16": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
        "vgg19": (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34),
    }[arch]
    rng = np.random.default_rng(seed)
    kernels = [s for k, s in vgg.expected_shapes(arch).items() if k.endswith("_W")]  # HWIO
    arrays = {}
    for idx, (_, _, cin, cout) in zip(convs, kernels, strict=True):
        arrays[f"features.{idx}.weight"] = (rng.normal(size=(cout, cin, 3, 3)) * 0.05).astype(
            np.float32
        )
        arrays[f"features.{idx}.bias"] = (rng.normal(size=cout) * 0.05).astype(np.float32)
    arrays["classifier.6.bias"] = np.zeros(10, np.float32)  # present in the published file
    return arrays


def run_benchmark(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs ``benchmarks/<script>`` from the repository root on the CPU; never raises."""
    return subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args],
        cwd=REPO_ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of a printed Markdown table, header first, without the separator row."""
    lines = [line for line in stdout.splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
