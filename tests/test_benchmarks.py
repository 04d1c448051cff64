"""The benchmark scripts run (tiny settings) and print the numbers they promise."""

import json
import subprocess
import sys

from helpers import REPO_ROOT, cli_env


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


def test_gpu_benchmark_smoke_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    proc = run_benchmark("gpu_ddpm.py", "--smoke", f"--json_out={out}", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    for key in ("train_images_per_s", "mfu_vs_matmul", "samples_per_minute", "step_tflop"):
        assert results[key] > 0, (key, results[key])
    assert results["dtype"] == "bfloat16"
    assert "training images/s" in proc.stdout and "samples/minute" in proc.stdout


def test_train_speed_reports_every_config(tmp_path):
    out = tmp_path / "speed.json"
    proc = run_benchmark(
        "train_speed.py",
        "--config=experiments/clip.py:smoke",
        "--config=experiments/gan_int_cls.py:smoke,joint",
        "--steps=2",
        f"--json_out={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["pipeline"] for r in rows] == ["clip", "gan_int_cls"]
    for r in rows:
        assert r["images_per_second"] > 0 and r["step_gflop"] > 0, r
    assert "img/s" in proc.stdout and "matmul" in proc.stdout


def test_tokenizer_speed_reports_training_and_codec_speed(tmp_path):
    out = tmp_path / "tok.json"
    proc = run_benchmark(
        "tokenizer_speed.py",
        "--smoke",
        "--kinds=vqvae",
        "--steps=1",
        "--batch=8",
        "--reps=1",
        f"--json_out={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["kind"] for r in rows] == ["vqvae"]
    for r in rows:
        assert r["images_per_second"] > 0 and r["encode_images_per_second"] > 0, r
        assert r["decode_images_per_second"] > 0 and r["grid"] == [4, 4], r
    assert "| vqvae |" in proc.stdout and "encode img/s" in proc.stdout
