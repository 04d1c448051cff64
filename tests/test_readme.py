"""Every command behind the README's results table runs, on its ``:smoke`` variant, so none of
them rots: the same config, the same overrides, the smoke variant's size and step count."""

import json
import re
import shlex

import pytest
from helpers import REPO_ROOT, run_cli, shared_config_run

BUDGET_KEYS = ("--config.train.steps=", "--config.train.max_minutes=")


def readme_commands() -> list[str]:
    """The ``python -m jaxgen.main`` lines of the README's "Commands behind the table" block."""
    text = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"Commands behind the table.*?```bash\n(.*?)```", text, re.S)
    assert block, "the README has no 'Commands behind the table' block"
    lines = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line.startswith("python -m jaxgen.main")]


def smoke_args(command: str) -> list[str]:
    """The command's arguments with ``:smoke`` added to its variant and its training budget
    left to the smoke variant."""
    args = shlex.split(command)[3:]
    out = []
    for arg in args:
        if arg.startswith("--config=experiments/"):
            arg += ",smoke" if ":" in arg else ":smoke"
        elif arg.startswith(BUDGET_KEYS):
            continue
        out.append(arg)
    return out


def test_the_readme_lists_a_command_for_every_family_it_reports():
    configs = {smoke_args(c)[0] for c in readme_commands()}
    assert len(configs) == len(readme_commands())  # one command per row
    families = ("ddpm", "dalle", "unclip", "clip", "gan", "gan_int_cls", "vae", "vqvae", "vqgan")
    for name in (*families, "dvae"):
        assert any(f"experiments/{name}.py" in c for c in configs), name
    # Budgets are steps, not minutes, so the table reproduces on any machine.
    for command in readme_commands():
        assert "--config.train.max_minutes=0" in command, command


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs_on_its_smoke_variant(command, tmp_path, tmp_path_factory):
    args = smoke_args(command)
    if len(args) == 1:  # the smoke config as it is: the family's own tests train the same run
        proc = shared_config_run(tmp_path_factory, args[0])
        workdir = proc.workdir
    else:
        workdir = tmp_path / "run"
        proc = run_cli(*args, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((workdir / "eval.json").read_text())
    assert record["final"] and record["step"] > 0 and record["images_seen"] > 0
