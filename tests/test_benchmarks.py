"""The benchmark scripts run (tiny settings) and print the numbers they promise."""

import json
import subprocess
from pathlib import Path

import pytest
from helpers import run_benchmark, table_rows


def assert_one_error_line(proc: subprocess.CompletedProcess, message: str) -> None:
    """The script failed with exit status 1 and a message, not a traceback."""
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


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
        "--set=train.batch_size=4",
        f"--json_out={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["pipeline"] for r in rows] == ["clip", "gan_int_cls"]
    assert [r["batch_size"] for r in rows] == [4, 4]  # --set reached both configs
    for r in rows:
        assert r["images_per_second"] > 0 and r["step_gflop"] > 0, r
    assert "img/s" in proc.stdout and "matmul" in proc.stdout
    proc = run_benchmark(
        "train_speed.py", "--config=experiments/clip.py:smoke", "--set=model.nope=1"
    )
    assert_one_error_line(proc, "Valid keys: ")


def test_profile_step_sorts_the_step_s_op_time_by_kind(tmp_path):
    out = tmp_path / "profile.json"
    proc = run_benchmark(
        "profile_step.py",
        "--config=experiments/ddpm.py:smoke",
        "--steps=1",
        "--set=train.batch_size=4",
        f"--json_out={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    kinds = r["kinds_ms"]
    # A UNet step runs convolutions and normalisation statistics; every op of the trace (summed
    # on their own) lands in one of the printed kinds.
    assert kinds["conv/dot"] > 0 and kinds["reduce"] > 0, kinds
    assert abs(sum(kinds.values()) - r["op_ms"]) < 1e-6 * r["op_ms"]
    assert 0 <= r["idle_share"] < 1 and r["num_ops"] > 10, r
    # By layer: forward and backward passes of the UNet's named modules hold much of it.
    layers = r["layers_ms"]
    named = sum(v for k, v in layers.items() if k.startswith(("forward: ", "backward: ")))
    assert named > 0.3 * r["op_ms"], layers
    assert layers.get("forward: conv", 0) > 0 and layers.get("backward: norm", 0) > 0, layers
    rows = {row[0]: row for row in table_rows(proc.stdout)}
    assert set(rows) >= {"kind", "conv/dot", "elementwise", "layer", "largest ops"}, proc.stdout
    proc = run_benchmark("profile_step.py", "--config=experiments/ddpm.py:smoke", "--set=x.y=1")
    assert_one_error_line(proc, "Valid keys: ")


def test_profile_step_kinds_and_layers_of_hand_written_hlo(monkeypatch):
    import importlib.util

    benchmarks = Path(__file__).parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))  # the script imports its sibling common.py
    spec = importlib.util.spec_from_file_location("profile_step", benchmarks / "profile_step.py")
    ps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ps)
    hlo = """HloModule jit_step, entry_computation_layout={()}

%fused_cat (p0: f32[2,4], p1: f32[2,4]) -> f32[2,8] {
  %p0 = f32[2,4]{1,0} parameter(0)
  %p1 = f32[2,4]{1,0} parameter(1)
  ROOT %c = f32[2,8]{1,0} concatenate(%p0, %p1), dimensions={1}
}

%fused_conv (p0: f32[1,4,4,2], p1: f32[3,3,2,2]) -> f32[1,4,4,2] {
  %p0 = f32[1,4,4,2]{3,2,1,0} parameter(0)
  %p1 = f32[3,3,2,2]{3,2,1,0} parameter(1)
  %v = f32[1,4,4,2]{3,2,1,0} convolution(%p0, %p1), window={size=3x3 pad=1_1x1_1}
  ROOT %t = f32[1,4,4,2]{3,2,1,0} tanh(%v)
}

ENTRY %main (a: f32[2,4]) -> f32[2,8] {
  %a = f32[2,4]{1,0} parameter(0)
  %cat_fusion = f32[2,8]{1,0} fusion(%a, %a), kind=kLoop, calls=%fused_cat
  %conv_fusion = f32[1,4,4,2]{3,2,1,0} fusion(%x, %k), kind=kOutput, calls=%fused_conv, \
metadata={op_name="jit(step)/transpose(jvp(UNet))/up_1_res_0/conv1/conv_general_dilated"}
  %all-reduce.1 = f32[2,8]{1,0} all-reduce(%cat_fusion), to_apply=%add
  ROOT %add_fusion = f32[2,8]{1,0} add(%cat_fusion, %cat_fusion), metadata={op_name="jit(step)/add"}
}
"""
    computations, instructions, sources = ps.parse_hlo(hlo)
    kinds = {
        name: ps.kind_of(ps.opcodes_of(name, computations, instructions), name)
        for name in ("cat_fusion", "conv_fusion", "all-reduce.1", "add_fusion")
    }
    assert kinds == {
        "cat_fusion": "concatenate",
        "conv_fusion": "conv/dot",
        "all-reduce.1": "collective",
        "add_fusion": "elementwise",
    }, kinds
    assert ps.layer_of(sources["conv_fusion"]) == "backward: conv"
    assert ps.layer_of(sources["add_fusion"]) == "(outside modules: loss, optimizer)"
    assert ps.layer_of("") == "(no source: a library fusion)"
    assert ps.layer_of("jit(step)/jvp(UNet)/down_1_0_xattn/div") == "forward: xattn"


def test_conv_forms_times_both_forms_that_agree(tmp_path):
    out = tmp_path / "conv.json"
    proc = run_benchmark(
        "conv_forms.py", "--reps=1", "--shapes", "2,8,5,7,1", "2,8,4,6,2", f"--json_out={out}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["shape"] for r in rows] == [[2, 8, 5, 7, 1], [2, 8, 4, 6, 2]]
    for r in rows:
        assert all(r[f"{f}_{p}_ms"] > 0 for f in ("xla", "im2col") for p in ("forward", "train"))
    # The forms compute the same convolution, and the shifted-matmul kernel gradient is XLA's
    # (stride 1 only).
    assert all(r["im2col_error"] < 1e-5 for r in rows), rows
    assert rows[0]["kernel_grad_error"] < 1e-5 and "kernel_grad_xla_ms" not in rows[1]
    assert len(table_rows(proc.stdout)) == 3, proc.stdout
    proc = run_benchmark("conv_forms.py", "--shapes", "2,8,5")
    assert_one_error_line(proc, "--shapes takes")


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


def test_workdir_benchmarks_read_a_trained_run(trained_workdir):
    """quality_curve, sweep_eval, relation_errors and shape_errors on the shared smoke run
    (read-only)."""
    before = sorted(p.relative_to(trained_workdir) for p in trained_workdir.rglob("*"))
    proc = run_benchmark("quality_curve.py", str(trained_workdir), "--metrics=test/colour")
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = [json.loads(line) for line in (trained_workdir / "eval_history.jsonl").open()]
    # One row per evaluation (a step evaluated again, final or not, counts once).
    history = list({(r["step"], r.get("final", True)): r for r in history}.values())
    rows = table_rows(proc.stdout)
    # The header, then one row per evaluation of the run with its step, images seen and colour
    # accuracy with its interval.
    assert len(rows) == 1 + len(history), proc.stdout
    last, final = rows[-1], history[-1]
    assert str(final["step"]) in last and f"{final['images_seen']}" in last, proc.stdout
    colour = "{:.3f} [{:.3f}, {:.3f}]".format(
        final["test/colour"], final["test/colour_lo"], final["test/colour_hi"]
    )
    assert colour in last, proc.stdout

    proc = run_benchmark(
        "sweep_eval.py",
        str(trained_workdir),
        "--key=sample.guidance_scale",
        "--values=1,2",
        "--set=eval.val_num_samples=3",
        "--metrics=val/num_images,val/colour",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = table_rows(proc.stdout)[1:]
    assert [row[0] for row in rows] == ["1.0", "2.0"], proc.stdout
    assert [row[1] for row in rows] == ["3.000", "3.000"], proc.stdout  # --set held fixed

    proc = run_benchmark("relation_errors.py", str(trained_workdir), "--num=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = [[int(v) for v in row[1:]] for row in table_rows(proc.stdout)[1:]]
    # Every one of the 8 prompts lands in exactly one cell of the 4 x 5 confusion matrix.
    assert len(counts) == 4 and all(len(r) == 5 for r in counts), proc.stdout
    assert sum(map(sum, counts)) == 8, proc.stdout

    proc = run_benchmark("shape_errors.py", str(trained_workdir), "--num=6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = [[int(v) for v in row[1:]] for row in table_rows(proc.stdout)[1:]]
    # Every object of the 6 prompts lands in one cell of the 4 x 5 matrix (1 or 2 per prompt).
    assert len(counts) == 4 and all(len(r) == 5 for r in counts), proc.stdout
    assert 6 <= sum(map(sum, counts)) <= 12 and "two-object prompts" in proc.stdout

    proc = run_benchmark("diversity.py", str(trained_workdir), "--num=4", "--k=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = table_rows(proc.stdout)
    assert len(rows) == 2 and rows[1][1] == "ddpm", proc.stdout
    diversity = float(rows[1][5].split()[0])  # judge features: two seeds differ
    assert diversity > 0 and "4 test prompts, 2 samples each" in proc.stdout, proc.stdout
    assert before == sorted(p.relative_to(trained_workdir) for p in trained_workdir.rglob("*"))

    proc = run_benchmark("diversity.py", str(trained_workdir), "--k=1")
    assert_one_error_line(proc, "--k must be at least 2")
    for script, *extra in [("relation_errors.py",), ("sweep_eval.py", "--key=a.b", "--values=1")]:
        proc = run_benchmark(script, str(trained_workdir / "nowhere"), *extra)
        assert_one_error_line(proc, "not a jaxgen workdir")
    proc = run_benchmark("sweep_eval.py", str(trained_workdir), "--key=sample.nope", "--values=1")
    assert_one_error_line(proc, "Valid keys: ")
    for script, *extra in [("relation_errors.py",), ("sweep_eval.py", "--key=seed", "--values=1")]:
        proc = run_benchmark(script, str(trained_workdir), "--set=sample.nope=1", *extra)
        assert_one_error_line(proc, "Valid keys: ")


def test_ddpm_speed_reports_training_sampling_and_the_unconditional_step(tmp_path):
    # The default config's text_init and freeze_text (the benchmark times freshly initialised
    # weights and loads nothing): the unconditional contender must drop them with the text tower.
    out = tmp_path / "ddpm_speed.json"
    proc = run_benchmark(
        "ddpm_speed.py",
        "--config=experiments/ddpm.py:smoke",
        "--config.model.text_init=pretrain:clip",
        "--config.model.freeze_text=True",
        "--steps=1",
        "--rounds=1",
        "--warmup=0",
        "--repeats=1",
        "--sample_steps=2",
        f"--json_out={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["train"]["step_flops"] > 0 and r["train"]["images_per_s_same_batch"] > 0
    assert 0 < r["train"]["fraction_of_matmul"] and r["sampler"]["efficiency"] > 0
    # The unconditional UNet has fewer parameters (no text encoder, no cross-attention).
    assert 0 < r["train_uncond"]["params"] < r["train"]["params"]
    assert "step rate / matmul rate" in proc.stdout and "sampler / (2 x forward)" in proc.stdout


def test_gan_speed_times_the_gan_and_the_ddpm_sampler_on_the_same_prompts(tmp_path):
    out = tmp_path / "gan_speed.json"
    proc = run_benchmark("gan_speed.py", "--smoke", "--batch=4", "--repeats=1", f"--json_out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["batch"] == 4 and set(r["images_per_second"]) == {"gan", "ddpm"}
    assert all(v > 0 for v in r["images_per_second"].values())
    assert "GAN / DDPM images per second" in proc.stdout and "attention generator" in proc.stdout


def test_dalle_speed_reports_training_the_cache_the_sampler_and_maskgit(tmp_path):
    out = tmp_path / "dalle.json"
    proc = run_benchmark(
        "dalle_speed.py",
        "--config=experiments/dalle.py:smoke",
        "--steps=1",
        "--batch=4",
        "--repeats=1",
        f"--json_out={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["image_tokens"] == 16 and r["maskgit_steps"] == 8 and r["guidance"]
    # Each ratio is its two timings' quotient, as printed.
    assert r["image_tokens_per_second"] == r["images_per_second"] * 16
    ratio = r["cached_tokens_per_second"] / r["recompute_tokens_per_second"]
    assert abs(r["cached_over_recompute"] - ratio) < 1e-9 * ratio
    ratio = r["maskgit_images_per_second"] / r["autoregressive_images_per_second"]
    assert abs(r["maskgit_over_autoregressive"] - ratio) < 1e-9 * ratio
    assert 0 < r["encode_share_of_step"] and 0 < r["sampler_over_steps"]
    rows = {row[0]: row[1] for row in table_rows(proc.stdout)}
    assert rows["cached / recompute"] == f"{r['cached_over_recompute']:.2f}"
    proc = run_benchmark("dalle_speed.py", "--config=experiments/dalle.py:smoke", "--set=x=1")
    assert_one_error_line(proc, "Unknown config key")


def test_text2scene_speed_reports_training_decodings_and_peers_on_the_same_prompts():
    proc = run_benchmark(
        "text2scene_speed.py",
        "--config=experiments/text2scene.py:shapes,smoke",
        "--steps=1",
        "--repeats=1",
        "--beam=2",
        "--peers=ddpm:smoke",
        "--peer_batch=4",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {row[0]: row[1] for row in table_rows(proc.stdout)}
    assert float(rows["training scenes/s (batch 8)"]) > 0
    assert float(rows["training step GFLOP"]) > 0
    for name in ("greedy", "sample", "beam 2"):
        assert float(rows[f"decoding scenes/s, {name} (batch 8)"]) > 0
    ours = float(rows["generate images/s, text2scene layouts (batch 4)"])
    peer = float(rows["generate images/s, ddpm:smoke (batch 4)"])
    assert ours > 0 and peer > 0
    assert float(rows["text2scene layouts / ddpm:smoke"]) == pytest.approx(ours / peer, rel=0.02)
    proc = run_benchmark(
        "text2scene_speed.py", "--config=experiments/text2scene.py:smoke", "--peers=ddpm:smoke"
    )
    assert_one_error_line(proc, "--peers times layouts of shapes")
    proc = run_benchmark(
        "text2scene_speed.py", "--config=experiments/text2scene.py:smoke", "--set=x=1"
    )
    assert_one_error_line(proc, "Unknown config key")


def test_text2scene_ceiling_oracle_reads_every_object_from_its_description():
    proc = run_benchmark("text2scene_ceiling.py", "--num=60", "--split=val")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {row[0]: [float(v) for v in row[1:]] for row in table_rows(proc.stdout)[1:]}
    for name in ("sampled", "centre"):
        u_precision, u_recall, u_coord, b_precision, b_recall, b_coord = rows[name]
        assert u_precision == u_recall == 1.0  # the description names every object
        assert 0 < b_coord < 1 and 0 < b_precision <= 1 and 0 < b_recall <= 1


def test_tokenizer_codes_counts_one_background_code_for_a_cell_tokenizer(tmp_path):
    from helpers import run_cli

    workdirs = []
    for variant in ("cell,smoke", "smoke"):
        workdir = tmp_path / variant.replace(",", "_")
        proc = run_cli(f"--config=experiments/dvae.py:{variant}", f"--workdir={workdir}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        workdirs.append(str(workdir))
    out = tmp_path / "codes.json"
    proc = run_benchmark("tokenizer_codes.py", *workdirs, "--images=16", f"--json_out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cell, conv = json.loads(out.read_text())
    assert (cell["encoder"], conv["encoder"]) == ("cell", "conv")
    assert cell["black_cells"] == conv["black_cells"] > 0
    # Identical all-black cells read identical pixels: one code, by construction.
    assert cell["black_distinct_codes"] == 1 and cell["black_top_share"] == 1.0
    assert cell["black_entropy_bits"] == 0.0
    assert 1 <= conv["black_distinct_codes"] <= 16 and 1 <= conv["all_distinct_codes"] <= 16


def test_style_transfer_speed_times_jaxgen_and_the_torch_tutorial_on_one_network(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "style.json"
    proc = run_benchmark(
        "style_transfer_speed.py",
        "--size=32",
        "--steps=1",
        "--evals=1",
        "--nooptimise",
        f"--json_out={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["weights"] == "random" and "random weights" in proc.stdout
    # The same arrays in both networks: the same conv3_1 features.
    assert r["feature_relative_error"] < 1e-4
    rows = {row["contender"]: row for row in r["rows"]}
    ours, theirs = rows["jaxgen, compiled loop"], rows["torch, the tutorial"]
    # One step of torch's L-BFGS (defaults: at most 20 iterations, 25 evaluations); jaxgen gets
    # the iterations whose evaluations come closest (each iteration makes at least one).
    assert 1 <= theirs["evaluations"] <= 25 and ours["iterations"] < theirs["evaluations"]
    assert abs(ours["evaluations"] - theirs["evaluations"]) <= 10
    for row in (ours, theirs):
        assert row["seconds"] > 0 and row["one_evaluation"] > 0, row
        assert row["per_evaluation"] == pytest.approx(row["seconds"] / row["evaluations"])
    assert r["torch_over_jaxgen_time"] == pytest.approx(theirs["seconds"] / ours["seconds"])
    table = table_rows(proc.stdout)
    assert [row[0] for row in table[1:3]] == ["jaxgen, compiled loop", "torch, the tutorial"]
    assert "ratio (torch time / jaxgen time)" in proc.stdout
    assert "final losses" in proc.stdout

    proc = run_benchmark("style_transfer_speed.py", f"--weights={tmp_path / 'nowhere.npz'}")
    assert_one_error_line(proc, "No VGG16 weight file")


def test_style_transfer_quality_judges_each_pair_with_another_network(tmp_path):
    out = tmp_path / "quality.json"
    proc = run_benchmark(
        "style_transfer_quality.py",
        "--pairs=val",
        "--iterations=2",
        "--set",
        "image_size=32",
        "--preserve",
        f"--json_out={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert [row["variant"] for row in r["rows"]] == ["default", "luminance", "histogram"] * 2
    for row in r["rows"]:
        assert row["style_reduction"] == pytest.approx(
            row["style_distance_of_content"] / row["style_distance"]
        )
    assert set(r["summary"]) == {"default", "luminance", "histogram"}
    assert "geometric mean style reduction" in proc.stdout
