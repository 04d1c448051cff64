"""Faults: SIGKILL and SIGTERM mid-run, a damaged checkpoint, NaN steps, pickles, bad input.

The kill and damage tests compare with the uninterrupted reference run (``reference_workdir``,
24 steps) and demand bit-identical parameters and optimizer state: the data order, the per-step
RNG and the optimizer state all come back from the checkpoint, and XLA on the CPU is
deterministic for a fixed program.
"""

import pickle
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scale_helpers as sh
from helpers import TEST_XLA_FLAGS, copy_workdir, experiment_config, read_jsonl, run_cli
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_cli import assert_clean_error

import jaxgen
from jaxgen import data as data_lib
from jaxgen.data.tokenizer import PromptError
from jaxgen.pipelines import build_pipeline
from jaxgen.pipelines.ddpm import DDPMPipeline
from jaxgen.training import mesh as mesh_lib
from jaxgen.training import workdir as workdir_lib


def saved_steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def assert_matches_reference(workdir, reference_workdir):
    ours, ref = sh.state_of(workdir), sh.state_of(reference_workdir)
    assert int(ours.step) == int(ref.step) == sh.STEPS
    sh.assert_bit_identical(ours.params, ref.params)
    sh.assert_bit_identical(ours.opt_state, ref.opt_state)
    sh.assert_bit_identical(ours.ema_params, ref.ema_params)


def test_sigkill_then_rerun_is_bit_identical(tmp_path, reference_workdir):
    workdir = tmp_path / "run"
    proc = sh.start_cli(*sh.smoke_args(workdir), log=tmp_path / "killed.log")
    killed_at = sh.wait_for_step(workdir, proc, 9)
    sh.kill(proc, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert killed_at < sh.STEPS and saved_steps(workdir) and max(saved_steps(workdir)) < sh.STEPS
    rerun = run_cli(*sh.smoke_args(workdir))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Resumed from step" in rerun.stderr
    assert_matches_reference(workdir, reference_workdir)


def test_sigterm_saves_the_current_step_and_exits_cleanly(tmp_path, reference_workdir):
    workdir = tmp_path / "run"
    log = tmp_path / "terminated.log"
    proc = sh.start_cli(*sh.smoke_args(workdir), log=log)
    sh.wait_for_step(workdir, proc, 5)
    sh.kill(proc, signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "SIGTERM: saved a checkpoint at step" in text, text[-2000:]
    step = int(text.split("SIGTERM: saved a checkpoint at step ")[1].split(";")[0])
    assert step < sh.STEPS and max(saved_steps(workdir)) == step
    # The checkpoint is complete (the loop waited for it): it restores on its own.
    assert jaxgen.load(workdir).step == step
    assert not (workdir / "eval.json").exists()  # Preempted runs skip the final evaluation.
    rerun = run_cli(*sh.smoke_args(workdir))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"Resumed from step {step}" in rerun.stderr
    assert_matches_reference(workdir, reference_workdir)


def test_sigterm_on_two_devices_saves_and_resumes_like_one(tmp_path, reference_workdir):
    """The SIGTERM path with the batch split over 2 fake CPU devices (a subprocess: the test
    session has one device), so the sharded save, restore and data position are exercised."""
    from test_scale import assert_same_training

    workdir = tmp_path / "run"
    two = {"XLA_FLAGS": f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count=2"}
    log = tmp_path / "terminated.log"
    proc = sh.start_cli(*sh.smoke_args(workdir), env=two, log=log)
    sh.wait_for_step(workdir, proc, 5)
    sh.kill(proc, signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "'data': 2" in text and "SIGTERM: saved a checkpoint at step" in text, text[-2000:]
    step = int(text.split("SIGTERM: saved a checkpoint at step ")[1].split(";")[0])
    assert step < sh.STEPS and max(saved_steps(workdir)) == step
    rerun = run_cli(*sh.smoke_args(workdir), env=two)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"Resumed from step {step}" in rerun.stderr and "'data': 2" in rerun.stderr
    # Split over 2 devices the sums run in another order: the same training within rounding.
    assert_same_training(workdir, reference_workdir)


def test_truncated_latest_checkpoint_falls_back_with_a_warning(tmp_path, reference_workdir):
    workdir = copy_workdir(reference_workdir, tmp_path / "run")
    assert saved_steps(workdir) == [16, 20, 24]
    files = sorted(
        (p for p in (workdir / "checkpoints" / "24" / "state").rglob("*") if p.is_file()),
        key=lambda p: p.stat().st_size,
    )
    victim = files[-1]  # The largest file holds the array data.
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    rerun = run_cli(*sh.smoke_args(workdir))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    warning = next(line for line in rerun.stderr.splitlines() if "unreadable" in line)
    assert "step 24" in warning, warning
    assert "Resumed from step 20" in rerun.stderr
    assert_matches_reference(workdir, reference_workdir)


def _fake_step(nan_steps):
    """A train step that adds 1 to every parameter and reports NaN at ``nan_steps``."""

    def train_step(self, state, batch, rng):
        del self, batch, rng
        step = state.step + 1
        bad = jnp.isin(step, jnp.asarray(nan_steps))
        params = jax.tree.map(lambda p: p + 1.0, state.params)
        return state.replace(step=step, params=params), {"loss": jnp.where(bad, jnp.nan, 1.0)}

    return train_step


def test_skip_nonfinite_updates_skips_only_the_bad_steps(tmp_path, monkeypatch):
    config = experiment_config("ddpm", "smoke")
    config.train.steps = 10
    config.train.log_every = 1
    config.train.checkpoint_every = 5
    config.train.skip_nonfinite_updates = True
    config.sample.every_steps = 0
    mesh = mesh_lib.make_mesh(config)
    source = data_lib.build_source(config.data, "train")
    initial = workdir_lib.init_state(build_pipeline(config), config, mesh, source).params
    monkeypatch.setattr(DDPMPipeline, "train_step", _fake_step([4, 7]))
    workdir = tmp_path / "run"
    jaxgen.train(config, workdir)
    state = jaxgen.load(workdir).state
    assert int(state.step) == 10
    # 10 steps, of which 2 skipped: every parameter moved by exactly 8.
    moved = jax.tree.map(
        lambda a, b: np.unique(np.asarray(a) - np.asarray(b)), state.params, initial
    )
    assert all(np.allclose(m, 8.0) for m in jax.tree.leaves(moved))
    records = [r for r in read_jsonl(workdir / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records if r["skipped"]] == [4, 7]
    assert records[-1]["skipped_steps"] == 2


def test_checkpoints_hold_no_pickles_and_load_without_unpickling(reference_workdir, monkeypatch):
    for path in (reference_workdir / "checkpoints").rglob("*"):
        if path.is_file():
            head = path.read_bytes()[:2]
            # A pickle starts with the PROTO opcode 0x80 and a protocol number 2..5.
            assert not (
                head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
            ), path

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load tried to unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    assert jaxgen.load(reference_workdir).step == sh.STEPS


@pytest.mark.parametrize(
    "override, needles",
    [
        ("--config.train.batch_size=0", ("train.batch_size", "positive")),
        ("--config.train.batch_size=6", ("batch_size=6", "divisible", "4 devices")),
        ("--config.train.learning_rate=-0.1", ("train.learning_rate",)),
        ("--config.train.ema_decay=1.5", ("train.ema_decay", "[0, 1)")),
        ("--config.train.steps=0", ("train.steps",)),
        ("--config.data.image_size=15", ("data.image_size=15", "multiple of 2")),
        ("--config.diffusion.cond_drop_prob=1.5", ("cond_drop_prob",)),
        ("--config.diffusion.timestep_sampling=beta", ("timestep sampling", "logit_normal")),
    ],
)
def test_out_of_range_config_values(tmp_path, override, needles):
    proc = run_cli(*sh.smoke_args(tmp_path / "run", override), env=sh.FOUR_DEVICES)
    assert_clean_error(proc, *needles)


@pytest.fixture(scope="module")
def reference_model(reference_workdir):
    return jaxgen.load(reference_workdir)


def should_reject(text: str, max_len: int) -> bool:
    """The documented rule, written out: not UTF-8 encodable, blank, or too long for BOS+EOS."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return not text.strip() or len(data) + 2 > max_len


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=80))
@example("a red circle")  # always one prompt that must sample, and one of each rejection
@example("   ")
@example("\ud800")
@example("x" * 63)
def test_any_text_prompt_samples_or_raises_prompt_error(reference_model, text):
    """Hostile prompts: a clean PromptError exactly when the rule says so, else a valid image."""
    max_len = reference_model.config.data.max_text_len
    if should_reject(text, max_len):
        with pytest.raises(PromptError):
            reference_model.generate([text], seed=0)
        return
    images = reference_model.generate([text], seed=0)
    assert images.shape == (1, 16, 16, 3) and images.dtype == np.uint8
