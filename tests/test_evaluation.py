"""Evaluation that can be trusted: intervals, the validation/final split plan, the evaluation
CLIP kept apart from the re-ranking one, shared runs, and records that say what they bought."""

import json

import jax
import ml_collections
import numpy as np
import pytest
from helpers import experiment_config, run_cli

from jaxgen.config import base_config, load_experiment
from jaxgen.evaluation import intervals, judges
from jaxgen.pipelines.base import EvalPlan, check_independent_scorer
from jaxgen.training import pretrain
from jaxgen.training import workdir as workdir_lib


def _wilson_by_roots(k, n, z=intervals.Z95):
    # The Wilson bounds are the p that solve (k/n - p)^2 = z^2 p (1 - p) / n, a quadratic in p.
    phat = k / n
    a, b, c = 1 + z * z / n, -(2 * phat + z * z / n), phat * phat
    return sorted(np.roots([a, b, c]).real)


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (81, 263), (256, 256), (200, 256)])
def test_wilson_matches_the_roots_of_its_quadratic(k, n):
    lo, hi = intervals.wilson(k, n)
    np.testing.assert_allclose([lo, hi], _wilson_by_roots(k, n), atol=1e-9)
    if k == 0:  # closed form: z^2 / (n + z^2)
        assert lo == 0.0 and hi == pytest.approx(intervals.Z95**2 / (n + intervals.Z95**2))


def test_wilson_covers_the_true_proportion_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    p, n = 0.3, 256
    covered = [
        lo <= p <= hi for lo, hi in (intervals.wilson(k, n) for k in rng.binomial(n, p, 4000))
    ]
    assert 0.935 <= np.mean(covered) <= 0.965


def test_proportion_and_mean_intervals():
    res = intervals.proportion("acc", [True] * 3 + [False])
    assert res["acc"] == 0.75 and (res["acc_lo"], res["acc_hi"]) == intervals.wilson(3, 4)
    res = intervals.mean("clip", [1.0, 2.0, 3.0, 4.0])
    half = intervals.Z95 * np.sqrt(5 / 3) / 2  # sample sd sqrt(5/3), n = 4
    assert res["clip"] == 2.5
    np.testing.assert_allclose([res["clip_lo"], res["clip_hi"]], [2.5 - half, 2.5 + half])
    assert np.isnan(intervals.mean("x", [1.0])["x_lo"])


def test_a_rate_over_n_items_gets_the_wilson_interval_of_its_count():
    res = intervals.rate("recall", 0.25, 40)
    assert (res["recall_lo"], res["recall_hi"]) == intervals.wilson(10, 40)


def test_bootstrap_of_a_mean_agrees_with_the_normal_interval():
    x = np.random.default_rng(1).normal(3.0, 2.0, 2000)
    boot = intervals.bootstrap("m", np.mean, x, num_resamples=400)
    normal = intervals.mean("m", x)
    width = normal["m_hi"] - normal["m_lo"]
    assert boot["m"] == pytest.approx(x.mean())
    assert abs(boot["m_lo"] - normal["m_lo"]) < 0.15 * width
    assert abs(boot["m_hi"] - normal["m_hi"]) < 0.15 * width


def test_bootstrap_interval_of_a_frechet_distance_holds_it():
    # Resampling repeats items and inflates a Frechet distance: the draws sit above the value,
    # so the interval is shifted back by their bias and holds it.
    from jaxgen.evaluation.frechet import frechet_distance

    rng = np.random.default_rng(2)
    fake, real = rng.normal(0.2, 1.0, (256, 8)), rng.normal(0.0, 1.0, (256, 8))
    res = intervals.bootstrap("fd", frechet_distance, fake, real, num_resamples=100)
    assert res["fd"] == pytest.approx(frechet_distance(fake, real))
    assert res["fd_lo"] < res["fd"] < res["fd_hi"]
    draws = [
        frechet_distance(fake[rng.integers(256, size=256)], real[rng.integers(256, size=256)])
        for _ in range(50)
    ]
    assert np.median(draws) > res["fd"]  # the bias the shift removes
    # Near copies (reconstructions of the real images): the distance is near 0 and the shift
    # would carry the lower end below it (a distance cannot be negative); the floor clips it.
    same = real + rng.normal(0.0, 0.01, real.shape)
    free = intervals.bootstrap("fd", frechet_distance, same, real, num_resamples=100)
    assert free["fd_lo"] < 0
    floored = intervals.bootstrap("fd", frechet_distance, same, real, num_resamples=100, floor=0)
    assert floored["fd_lo"] == 0 and floored["fd_hi"] == free["fd_hi"]


def test_results_print_with_their_intervals():
    res = {"a": 0.5, "a_lo": 0.4, "a_hi": 0.6, "b": 2.0}
    assert intervals.format_result(res, "a") == "0.500 [0.400, 0.600]"
    assert intervals.format_result(res, "b", digits=1) == "2.0"
    assert intervals.is_interval_key("a_lo") and not intervals.is_interval_key("a")


def test_final_evaluation_reads_test_and_training_reads_val():
    config = base_config("ddpm", "shapes")
    config.eval.val_num_samples = 64
    final, val = (EvalPlan.from_config(config.eval, f) for f in (True, False))
    assert final == EvalPlan(("test", "heldout"), 256, True)
    assert val == EvalPlan(("val", "heldout_val"), 64, False)
    config.eval.val_num_samples = 0  # 0: as many as the final one
    assert EvalPlan.from_config(config.eval, False).num_samples == 256
    digits = base_config("ddpm", "digits")
    assert EvalPlan.from_config(digits.eval, False).splits == ("val",)
    assert EvalPlan.from_config(digits.eval).splits == ("test",)


def test_every_final_evaluation_judges_at_least_256_prompts():
    for name, arg in [("ddpm", None), ("ddpm", "digits"), ("gan_int_cls", None), ("vqgan", None)]:
        config = experiment_config(name, arg)
        assert int(config.eval.num_samples) >= 256, (name, arg)
        assert set(config.eval.splits).isdisjoint(config.eval.val_splits), (name, arg)


def test_the_evaluation_clip_is_never_the_reranking_clip():
    config = experiment_config("ddpm")
    assert config.sample.rerank > 1 and config.sample.rerank_clip
    assert config.eval.clip_workdir != config.sample.rerank_clip
    check_independent_scorer(config)
    config.eval.clip_workdir = config.sample.rerank_clip
    with pytest.raises(ValueError, match="same CLIP"):
        check_independent_scorer(config)
    with pytest.raises(ValueError, match="same CLIP"):
        workdir_lib.build_pipeline(config)
    config.sample.rerank = 1  # nothing is picked: the same CLIP may score
    check_independent_scorer(config)


def test_best_of_k_is_judged_next_to_single_samples():
    judge = judges.build_judge(
        ml_collections.ConfigDict({"name": "shapes", "image_size": 32, "max_text_len": 64})
    )
    _, _, real = judge.prompts("test", 64, seed=0)
    calls = []

    def generate(state, prompts, rng):  # a generator that draws nothing
        return np.zeros_like(real)

    def rerank(state, prompts, rng, candidates):  # its "best of k" is the real images
        calls.append(candidates)
        return real

    res = judges.evaluate_generator(
        generate, judge, None, jax.random.key(0), splits=("test",), num_samples=64,
        rerank=rerank, candidates=4,
    )  # fmt: skip
    assert calls == [4]
    assert res["test/colour"] == 0.0 and res["test/best_of_4/colour"] >= 0.99
    assert res["test/num_images"] == res["test/best_of_4/num_images"] == 64
    # Every score carries its interval, and the interval holds the score.
    for key in ("test/colour", "test/best_of_4/colour", "test/frechet"):
        assert res[f"{key}_lo"] <= res[key] <= res[f"{key}_hi"]
    # Colour is judged per object (64 images hold more): the Wilson bound of 0 in that many.
    z2 = intervals.Z95**2
    num_objects = round(z2 / res["test/colour_hi"] - z2)
    assert num_objects > 64
    assert res["test/colour_hi"] == pytest.approx(intervals.wilson(0, num_objects)[1])
    with pytest.raises(ValueError, match="rerank"):
        judges.evaluate_generator(
            generate, judge, None, jax.random.key(0), splits=("test",), num_samples=8,
            candidates=2,
        )  # fmt: skip


def test_eval_records_say_what_they_bought(tmp_path):
    rec = workdir_lib.write_eval(
        tmp_path, {"val/x": 0.5, "val/x_lo": 0.4, "val/x_hi": 0.6}, 30,
        batch_size=8, train_minutes=2.5, final=False,
    )  # fmt: skip
    assert rec == {
        "step": 30, "images_seen": 240, "final": False, "train_minutes": 2.5,
        "val/x": 0.5, "val/x_lo": 0.4, "val/x_hi": 0.6,
    }  # fmt: skip
    assert not (tmp_path / "eval.json").exists()  # a periodic evaluation is history only
    final = workdir_lib.write_eval(tmp_path, {"test/x": 0.7}, 40, batch_size=8, final=True)
    assert json.loads((tmp_path / "eval.json").read_text()) == final
    history = [
        json.loads(line) for line in (tmp_path / "eval_history.jsonl").read_text().splitlines()
    ]
    assert [r["final"] for r in history] == [False, True]
    text = workdir_lib.format_eval(rec)
    assert text.splitlines() == [
        "step 30, 240 images seen, 2.5 min of training",
        "  val/x: 0.500 [0.400, 0.600]",
    ]


def test_shared_runs_live_outside_the_workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXGEN_SHARED_DIR", str(tmp_path / "shared"))
    config = ml_collections.ConfigDict({"eval": {"clip_workdir": "shared:clip:smoke,eval"}})
    run = tmp_path / "shared" / "clip_smoke_eval"
    assert pretrain.shared_dir("clip:smoke,eval") == run
    assert pretrain.pending(config, tmp_path / "a") == [("clip:smoke,eval", run)]
    with pytest.raises(Exception, match="shared run 'clip:smoke,eval'"):
        pretrain.resolve(config, tmp_path / "a")
    (run / "checkpoints").mkdir(parents=True)
    pretrain.mark_done(run, "clip:smoke,eval")
    # Trained once: every workdir resolves to it and none trains it again.
    for workdir in ("a", "b"):
        assert pretrain.pending(config, tmp_path / workdir) == []
        assert pretrain.resolve(config, tmp_path / workdir).eval.clip_workdir == str(run)


def test_a_run_trains_the_shared_evaluation_clip_once_and_scores_with_it(tmp_path):
    """Two GAN smoke runs name the same shared evaluation CLIP: the first trains it, the second
    reuses it, and both score their samples with it (and not with their own text encoder)."""
    shared = tmp_path / "shared"
    args = [
        "--config=experiments/gan_int_cls.py:smoke,joint",
        "--config.eval.clip_workdir=shared:clip:smoke,eval",
        "--config.train.steps=2",
    ]
    env = {"JAXGEN_SHARED_DIR": str(shared)}
    first = run_cli(*args, f"--workdir={tmp_path / 'a'}", env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    clip_run = shared / "clip_smoke_eval"
    assert json.loads((clip_run / "done.json").read_text())["experiment"] == "clip:smoke,eval"
    trained = (clip_run / "metrics.jsonl").read_text()
    second = run_cli(*args, f"--workdir={tmp_path / 'b'}", env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (clip_run / "metrics.jsonl").read_text() == trained  # not trained again
    assert "Pretraining clip:smoke,eval" not in second.stderr
    for workdir in ("a", "b"):
        res = json.loads((tmp_path / workdir / "eval.json").read_text())
        assert res["step"] == 2 and res["images_seen"] == 2 * 8 and res["final"]
        assert res["test/r_precision_lo"] <= res["test/r_precision"] <= res["test/r_precision_hi"]
        assert not (tmp_path / workdir / "pretrain").exists()


def test_a_steps_only_run_trains_its_own_pretraining_by_steps_alone(tmp_path, monkeypatch):
    # clip.py caps itself at 10 minutes. A main run with no minute cap lifts the cap of its own
    # pretraining runs (so its command pins every step), not of a shared run; a capped main run
    # leaves theirs alone.
    monkeypatch.setenv("JAXGEN_SHARED_DIR", str(tmp_path / "shared"))
    assert load_experiment("clip").train.max_minutes > 0
    own = pretrain.run_dir(tmp_path, "clip")
    steps_only = ml_collections.ConfigDict({"train": {"max_minutes": 0.0}})
    capped = ml_collections.ConfigDict({"train": {"max_minutes": 20.0}})
    assert pretrain.experiment("clip", own, steps_only).train.max_minutes == 0
    assert pretrain.experiment("clip", own, capped).train.max_minutes > 0
    shared = pretrain.shared_dir("clip")
    assert pretrain.experiment("clip", shared, steps_only).train.max_minutes > 0


def test_mean_pairwise_distance_against_hand_computed_cases():
    from jaxgen.evaluation.diversity import mean_pairwise_distance

    # Prompt 0: a 3-4-5 triangle's corners (distances 3, 4, 5); prompt 1: three equal samples.
    feats = np.array([[[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], [[1.0, 1.0]] * 3])
    np.testing.assert_allclose(mean_pairwise_distance(feats), [4.0, 0.0])
    with pytest.raises(ValueError, match=r"\[N, K >= 2, F\]"):
        mean_pairwise_distance(feats[:, :1])
