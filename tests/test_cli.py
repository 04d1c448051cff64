"""End-to-end tests of ``python -m jaxgen.main``: train, sample, eval, resume and bad input."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    SMOKE_CONFIG,
    cli_env,
    copy_workdir,
    experiment_config,
    read_jsonl,
    run_cli,
)
from PIL import Image

SMOKE_STEPS = experiment_config("ddpm", "smoke").train.steps
EVAL_KEYS = ("test/colour", "test/shape", "test/all", "heldout/colour", "heldout/all")


def assert_clean_error(proc, *needles: str) -> str:
    """Non-zero exit, exactly one ``error: ...`` line on stderr naming ``needles``, no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


# -- bad input: one clear line, no traceback ----------------------------------------------------
def test_unknown_pipeline(tmp_path):
    proc = run_cli(SMOKE_CONFIG, f"--workdir={tmp_path / 'run'}", "--config.pipeline=nope")
    assert_clean_error(proc, "nope", "ddpm")


def test_mistyped_config_key(tmp_path):
    proc = run_cli(SMOKE_CONFIG, f"--workdir={tmp_path / 'run'}", "--config.train.stpes=3")
    assert_clean_error(proc, "stpes", "steps", "batch_size")


def test_config_value_of_the_wrong_type(tmp_path):
    proc = run_cli(SMOKE_CONFIG, f"--workdir={tmp_path / 'run'}", "--config.train.steps=abc")
    assert_clean_error(proc, "train.steps", "abc")


def test_unknown_config_variant(tmp_path):
    proc = run_cli("--config=experiments/ddpm.py:nope", f"--workdir={tmp_path / 'run'}")
    assert_clean_error(proc, "nope", "shapes", "digits")


def test_missing_config_file(tmp_path):
    proc = run_cli("--config=experiments/nope.py", f"--workdir={tmp_path / 'run'}")
    assert_clean_error(proc, "nope.py")


@pytest.mark.parametrize("mode", ["sample", "eval"])
def test_empty_workdir(tmp_path, mode):
    workdir = tmp_path / "empty"
    workdir.mkdir()
    proc = run_cli(SMOKE_CONFIG, f"--workdir={workdir}", f"--mode={mode}")
    assert_clean_error(proc, str(workdir), "train")


def test_workdir_without_checkpoints(tmp_path):
    workdir = tmp_path / "no_ckpt"
    workdir.mkdir()
    config = experiment_config("ddpm", "smoke")
    (workdir / "config.json").write_text(config.to_json_best_effort())
    proc = run_cli(SMOKE_CONFIG, f"--workdir={workdir}", "--mode=sample", "--prompt=a red circle")
    assert_clean_error(proc, "No checkpoints", str(workdir))


# -- train -------------------------------------------------------------------------------------
def test_train_writes_the_workdir(smoke_run, trained_workdir):
    assert "Traceback" not in smoke_run.stderr
    assert "Evaluation" in smoke_run.stdout
    for name in ("config.json", "metrics.jsonl", "eval.json", "eval_history.jsonl"):
        assert (trained_workdir / name).is_file(), name
    assert any((trained_workdir / "tb").iterdir())
    steps = sorted(int(p.name) for p in (trained_workdir / "checkpoints").iterdir() if p.is_dir())
    assert steps and steps[-1] == SMOKE_STEPS
    config = json.loads((trained_workdir / "config.json").read_text())
    assert config["pipeline"] == "ddpm" and config["train"]["steps"] == SMOKE_STEPS


def test_train_metrics_are_finite(trained_workdir):
    records = read_jsonl(trained_workdir / "metrics.jsonl")
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    assert losses, records
    assert all(math.isfinite(loss) for _, loss in losses), losses
    steps = [s for s, _ in losses]
    assert steps == sorted(steps) and steps[-1] == SMOKE_STEPS


def test_train_writes_evaluation(trained_workdir):
    results = json.loads((trained_workdir / "eval.json").read_text())
    assert results["step"] == SMOKE_STEPS
    for key in EVAL_KEYS:
        assert 0.0 <= results[key] <= 1.0, (key, results)
    assert math.isfinite(results["test/frechet"])
    history = read_jsonl(trained_workdir / "eval_history.jsonl")
    assert history[-1]["step"] == SMOKE_STEPS


def test_train_writes_sample_grids(trained_workdir):
    grids = sorted((trained_workdir / "samples").glob("step_*.png"))
    assert grids and grids[-1].name == f"step_{SMOKE_STEPS:07d}.png"
    with Image.open(grids[-1]) as img:
        assert img.mode == "RGB" and min(img.size) >= 16


# -- sample and eval ---------------------------------------------------------------------------
def test_sample_writes_png_and_prints_path(trained_workdir):
    prompts = ["a large red circle", "a small blue square"]
    proc = run_cli(
        SMOKE_CONFIG,
        f"--workdir={trained_workdir}",
        "--mode=sample",
        *(f"--prompt={p}" for p in prompts),
        "--num_samples=2",
        "--seed=11",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    match = re.search(r"Wrote 2 samples to (\S+\.png)", proc.stdout)
    assert match, proc.stdout
    path = Path(match.group(1))
    assert path.is_file() and path.parent == trained_workdir / "samples"
    with Image.open(path) as img:
        grid = np.asarray(img.convert("RGB"))
    # The PNG shows, at 2x, the API's samples for the same prompts and seed side by side in a
    # 1-pixel grey (96) border. Each cell is compared with its sample directly (not with the
    # library's own grid of them, which an empty grid would match), and the samples are not
    # one flat colour (the border is, for any output).
    import jaxgen

    samples = jaxgen.load(trained_workdir).generate(prompts, seed=11)
    n, size = samples.shape[:2]
    assert n == 2 and all(s.std() > 0 for s in samples)
    assert not np.array_equal(samples[0], samples[1])
    assert grid.shape == (2 * (size + 2), 2 * (2 * size + 3), 3)
    border = np.ones(grid.shape[:2], bool)
    for i, sample in enumerate(samples):
        y, x = 2, 2 + 2 * i * (size + 1)
        cell = grid[y : y + 2 * size, x : x + 2 * size].astype(int)
        border[y : y + 2 * size, x : x + 2 * size] = False
        want = sample.repeat(2, axis=0).repeat(2, axis=1).astype(int)
        assert np.abs(cell - want).max() <= 1, i
    assert np.all(grid[border] == 96)
    for p in prompts:
        assert p in proc.stdout


def test_eval_rewrites_eval_json(trained_workdir, tmp_path):
    workdir = copy_workdir(trained_workdir, tmp_path / "run")
    (workdir / "eval.json").unlink()
    before = len(read_jsonl(workdir / "eval_history.jsonl"))
    proc = run_cli(SMOKE_CONFIG, f"--workdir={workdir}", "--mode=eval")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    results = json.loads((workdir / "eval.json").read_text())
    assert results["step"] == SMOKE_STEPS
    for key in EVAL_KEYS:
        assert 0.0 <= results[key] <= 1.0, (key, results)
    assert len(read_jsonl(workdir / "eval_history.jsonl")) == before + 1
    # Printed with what it bought and each score's interval.
    assert f"step {SMOKE_STEPS}, {results['images_seen']:,} images seen" in proc.stdout
    colour = "{:.3f} [{:.3f}, {:.3f}]".format(
        *(results[f"test/colour{s}"] for s in ("", "_lo", "_hi"))
    )
    assert f"test/colour: {colour}" in proc.stdout


def test_train_resumes_from_the_newest_checkpoint(trained_workdir, tmp_path):
    workdir = copy_workdir(trained_workdir, tmp_path / "run")
    before = read_jsonl(workdir / "metrics.jsonl")
    more = SMOKE_STEPS + 5
    proc = run_cli(SMOKE_CONFIG, f"--workdir={workdir}", f"--config.train.steps={more}")
    assert proc.returncode == 0, proc.stderr
    assert f"Resumed from step {SMOKE_STEPS}" in proc.stderr, proc.stderr
    new = read_jsonl(workdir / "metrics.jsonl")[len(before) :]
    new_steps = [r["step"] for r in new if "loss" in r]
    # Only the steps after the checkpoint were trained: nothing restarted from step 0.
    assert new_steps and min(new_steps) > SMOKE_STEPS and new_steps[-1] == more, new_steps
    steps = {int(p.name) for p in (workdir / "checkpoints").iterdir() if p.is_dir()}
    assert more in steps
    assert json.loads((workdir / "eval.json").read_text())["step"] == more
    assert (workdir / "samples" / f"step_{more:07d}.png").is_file()


def test_train_resumes_on_another_cpu_device_count(trained_workdir, tmp_path):
    """The shared run trained on one CPU device per core (the default); it resumes on one."""
    workdir = copy_workdir(trained_workdir, tmp_path / "run")
    more = SMOKE_STEPS + 2
    proc = run_cli(
        SMOKE_CONFIG, f"--workdir={workdir}", f"--config.train.steps={more}", "--cpu_devices=1"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Resumed from step {SMOKE_STEPS}" in proc.stderr, proc.stderr[-3000:]
    assert "JAX devices: [CpuDevice(id=0)] " in proc.stderr, proc.stderr[-3000:]
    assert json.loads((workdir / "eval.json").read_text())["step"] == more


@pytest.mark.parametrize(
    "cores, requested, batch, xla_flags, expected",
    [
        (2, 0, 32, "", 2),  # one device per core
        (2, 0, 9, "", 1),  # the largest count that divides the batch
        (1, 0, 32, "", 1),
        (2, 1, 32, "", 1),  # asked for one
        (2, 0, 32, "--xla_force_host_platform_device_count=3", 3),  # the user's count stands
    ],
)
def test_cpu_devices_rule(cores, requested, batch, xla_flags, expected):
    if len(os.sched_getaffinity(0)) < cores:
        pytest.skip(f"needs {cores} cores")
    code = (
        f"import os; os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:{cores}]); "
        "from jaxgen.training import distributed; import jax; "
        f"distributed.use_cpu_cores({requested}, {batch}); print(jax.device_count())"
    )
    env = {**cli_env(), "XLA_FLAGS": xla_flags}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) == expected, proc.stdout


@pytest.mark.parametrize(
    "prompt, needle", [("", "empty"), ("   ", "empty"), ("x" * 200, "200 UTF-8 bytes")]
)
def test_sample_bad_prompt(trained_workdir, prompt, needle):
    proc = run_cli(
        SMOKE_CONFIG, f"--workdir={trained_workdir}", "--mode=sample", f"--prompt={prompt}"
    )
    assert_clean_error(proc, needle)
