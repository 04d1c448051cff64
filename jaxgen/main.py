"""Command line: ``python -m jaxgen.main --config=experiments/ddpm.py[:arg] [--mode=...]``."""

import sys
from pathlib import Path

import jax
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<experiment>).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "eval"], "What to do.")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "Prompt for --mode=sample (repeatable).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 16, "Images per run of --mode=sample.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed for --mode=sample.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-process runs: host:port of process 0 (see README)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process runs: process count.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Join a multi-process run found by JAX (TPU pod slice, SLURM, MPI)."
)
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices",
    0,
    "Training on a CPU: JAX devices to split it into, data-parallel (0: one per core, a "
    "divisor of the batch; 1: one device). Ignored with XLA_FLAGS' device count or a "
    "multi-process run; --mode=sample and --mode=eval use one device.",
)
flags.mark_flags_as_required(["config"])


def _config_error(argv: list[str], error: Exception) -> str:
    """Explains a bad ``--config.*`` override, naming the valid keys at that level."""
    from jaxgen.config import load_experiment

    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    message = str(error)
    if "Traceback (most recent call last)" in message:
        # ml_collections embeds the traceback of a failing get_config() in its message.
        return f"{path}: " + message.strip().splitlines()[-1].split(": ", 1)[-1]
    bad = [a for a in argv if a.startswith("--config.")]
    if not path or not bad:
        return message
    try:
        config = load_experiment(path)
    except Exception:  # noqa: BLE001 (the config file itself is broken: report the original)
        return str(error)
    from jaxgen.config import resolve_key

    for override in bad:
        try:
            resolve_key(config, override[len("--config.") :].split("=", 1)[0])
        except ValueError as e:
            return str(e)
    return f"Bad config override: {error}"


def default_workdir(config_path: str) -> Path:
    """``runs/<experiment>[_<variant>]``, e.g. ``runs/ddpm`` or ``runs/ddpm_digits_smoke``."""
    file, _, arg = config_path.partition(":")
    name = Path(file).stem + ("_" + arg.replace(",", "_") if arg else "")
    return Path("runs") / name


def typed_overrides(argv: list[str], config) -> dict:
    """The ``--config.a.b=value`` overrides on the command line, with their parsed values."""
    from jaxgen.config import resolve_key

    out = {}
    for a in argv:
        if a.startswith("--config."):
            key = a[len("--config.") :].split("=", 1)[0]
            parent, leaf = resolve_key(config, key)
            out[key] = parent[leaf]
    return out


def parse_flags(argv: list[str]) -> list[str]:
    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if path is not None and not Path(path.partition(":")[0]).is_file():
        print(f"error: config file {path.partition(':')[0]!r} not found", file=sys.stderr)
        sys.exit(2)
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 (flag errors become one clear line)
        print(f"error: {_config_error(argv, e)}", file=sys.stderr)
        sys.exit(2)


def _quiet_library_logs() -> None:
    """Keeps orbax's per-save INFO chatter out of the console; warnings still show."""
    import logging as std_logging

    class _Filter(std_logging.Filter):
        def filter(self, record):
            return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname

    logging.get_absl_handler().addFilter(_Filter())


def run(argv) -> None:
    del argv
    _quiet_library_logs()
    from jaxgen.training import distributed

    joined = distributed.initialize(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=_DISTRIBUTED.value
    )
    if not joined and _MODE.value == "train":
        # Training splits its batches over the devices; sampling runs on one device, which on a
        # CPU split into several runs slower: --mode=sample and eval keep one device.
        distributed.use_cpu_cores(_CPU_DEVICES.value, int(_CONFIG.value.train.batch_size))
    from jaxgen import api
    from jaxgen.pipelines import get_pipeline_class
    from jaxgen.training import loop
    from jaxgen.training import workdir as workdir_lib

    config = _CONFIG.value
    config_path = flags.FLAGS["config"].config_filename
    workdir = Path(_WORKDIR.value or default_workdir(config_path))
    logging.info("JAX devices: %s (%d process(es))", jax.devices(), jax.process_count())
    if _MODE.value == "train":
        results = loop.train_and_evaluate(config, workdir)
        print(f"Evaluation ({workdir / workdir_lib.EVAL_FILE}): {results}")
        return
    saved = workdir_lib.load_config(workdir) if _PROMPT.value else None
    if saved is not None and get_pipeline_class(saved.pipeline).prompts_are_text:
        # Check prompts before the (slow) restore, so a typo is reported at once.
        from jaxgen.data.tokenizer import validate_prompt

        for p in _PROMPT.value:
            validate_prompt(p, int(saved.data.max_text_len))
    # The workdir's config.json describes the trained network; `--config.*` overrides typed on
    # this command line (e.g. `--config.sample.num_steps=20`) apply on top of it.
    model = api.load(workdir, overrides=typed_overrides(sys.argv, config))
    if _MODE.value == "sample":
        from jaxgen.training import images

        prompts = _PROMPT.value or model.pipeline.default_prompts(_NUM_SAMPLES.value)
        if _PROMPT.value and _NUM_SAMPLES.value > len(prompts) and model.pipeline.prompts_are_text:
            prompts = [prompts[i % len(prompts)] for i in range(_NUM_SAMPLES.value)]
        imgs = model.generate(prompts, seed=_SEED.value)
        path = workdir / "samples" / f"sample_step{model.step}_seed{_SEED.value}.png"
        images.save_png(images.make_grid(imgs), path, scale=2)
        print(f"Wrote {len(imgs)} samples to {path}")
        for i, p in enumerate(prompts):
            print(f"  [{i}] {p}")
    else:
        results = model.evaluate()
        record = workdir_lib.write_eval(
            workdir,
            results,
            model.step,
            batch_size=model.config.train.batch_size,
            train_minutes=model.train_minutes,
        )
        print(f"Evaluation ({workdir / workdir_lib.EVAL_FILE}):")
        print(workdir_lib.format_eval(record))


def main(argv) -> None:
    from jaxgen.data import DataError
    from jaxgen.data.tokenizer import PromptError
    from jaxgen.training.checkpoint import NoCheckpointError
    from jaxgen.training.loop import NonFiniteLossError

    try:
        run(argv)
    except (PromptError, NoCheckpointError, DataError, NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except ValueError as e:
        # Config values of the wrong kind surface as ValueErrors with a message for the user.
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
