"""Executes the Colab notebooks on the CPU in smoke mode (install cells skipped)."""

import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from helpers import REPO_ROOT, cli_env, experiment_config
from nbclient import NotebookClient

SKIP_TAG = "skip-in-tests"
NOTEBOOKS = sorted((REPO_ROOT / "colab").glob("*.ipynb"))


def prepare(nb, parameters: dict) -> None:
    """Drops cells tagged ``skip-in-tests``; appends ``parameters`` to the "parameters" cell."""
    nb.cells = [c for c in nb.cells if SKIP_TAG not in c.metadata.get("tags", [])]
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "a notebook needs exactly one cell tagged 'parameters'"
    assignments = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    cells[0].source += "\n# Injected by tests/test_notebooks.py\n" + assignments + "\n"


def outputs_text(nb) -> str:
    """The text a reader sees: streams and text/plain results of every cell."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif "text/plain" in out.get("data", {}):
                parts.append(out.data["text/plain"])
    return "\n".join(parts)


# Notebook -> the experiment whose smoke run it ends with (its WORKDIR's eval.json), and an
# evaluation key the notebook prints; optionally the smoke variant (default "smoke") and the
# shape of the four generated images it prints (default square at the data's size).
EXPERIMENTS = {
    "dalle": ("dalle", "test/colour"),
    "ddpm": ("ddpm", "test/colour"),
    "gan": ("gan", "test/colour"),
    "style_transfer": (
        "style_transfer",
        "style/style_reduction",
        "fast,smoke",
        "(4, 32, 48, 3)",  # chelsea's aspect, 48 pixels on the longer side
    ),
    "text2scene": ("text2scene", "test/u_precision"),
    "tokenizers": ("vqgan", "test/psnr"),
    "unclip": ("unclip", "test/prior_cosine"),
}


def test_notebooks_are_found():
    assert {p.stem for p in NOTEBOOKS} == set(EXPERIMENTS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path, tmp_path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    workdir = tmp_path / "run"
    # Every other workdir the notebook names (e.g. MASKGIT_WORKDIR) goes under tmp_path too, so
    # a test run never writes into, or resumes from, the checkout's runs/.
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    others = re.findall(r"^([A-Z_]+_WORKDIR) =", "".join(c.source for c in params), re.M)
    prepare(
        nb,
        {"SMOKE": True, "WORKDIR": str(workdir), **{n: str(tmp_path / n.lower()) for n in others}},
    )
    # The kernel is a child process: it inherits this environment (CPU only, this interpreter).
    for key, value in cli_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(REPO_ROOT)}},
    )
    client.execute()

    text = outputs_text(nb)
    assert "CpuDevice" in text
    assert (workdir / "eval.json").is_file()
    results = json.loads((workdir / "eval.json").read_text())
    experiment, key, *rest = EXPERIMENTS[path.stem]
    smoke = experiment_config(experiment, rest[0] if rest else "smoke")
    assert f'"{key}"' in text and results["step"] == smoke.train.steps
    size = smoke.data.image_size
    shape = rest[1] if rest else f"(4, {size}, {size}, 3)"
    assert f"{shape} uint8" in text
    images = [
        out
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert images, "the sample grid was not displayed"
    assert Path(workdir / "checkpoints").is_dir()
