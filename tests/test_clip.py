"""CLIP: the contrastive loss, the embedding metrics on constructed answers, the model's shapes,
the shapes content keys and caption variants, and the pipeline end to end on a smoke run."""

import json
import re

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import parse_cross_entropy, run_cli

from jaxgen.data import shapes
from jaxgen.data.tokenizer import encode
from jaxgen.evaluation import clip_metrics
from jaxgen.models.clip import CLIP, ImageEncoder
from jaxgen.pipelines.base import EvalPlan, Pipeline
from jaxgen.pipelines.clip import contrastive_loss


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# -- the loss, against a direct numpy computation -----------------------------------------------
def test_contrastive_loss_matches_numpy():
    rng = np.random.default_rng(0)
    img, txt = _unit(rng.normal(size=(5, 7))), _unit(rng.normal(size=(5, 7)))
    scale = np.log(1 / 0.07)
    loss, logits = contrastive_loss(jnp.asarray(img), jnp.asarray(txt), jnp.asarray(scale))
    s = np.exp(scale) * img @ txt.T

    def xent_rows(m):  # -log softmax(m)[i, i] averaged over rows, with an explicit loop
        return np.mean([np.log(np.exp(row).sum()) - row[i] for i, row in enumerate(m)])

    np.testing.assert_allclose(logits, s, rtol=1e-5)
    np.testing.assert_allclose(loss, 0.5 * (xent_rows(s) + xent_rows(s.T)), rtol=1e-5)


def test_contrastive_loss_clips_the_logit_scale():
    x = jnp.eye(3)
    _, logits = contrastive_loss(x, x, jnp.asarray(10.0))  # exp(10) would be ~22026
    np.testing.assert_allclose(np.diag(logits), 100.0, rtol=1e-5)


def test_perfect_embeddings_have_low_loss():
    x = jnp.eye(4)
    loss, _ = contrastive_loss(x, x, jnp.asarray(np.log(100.0)))
    assert float(loss) < 1e-3


# -- metrics on constructed embeddings with known answers ---------------------------------------
def test_recall_at_k_with_content_keys():
    # 3 queries, 4 gallery items. Query 0's best match is item 2 (same key "a"): a hit at 1.
    # Query 1 ("b") ranks 0, 2 ("a") above 1 ("b"): miss at 1, hit at 3.
    # Query 2 ("c") has no item with its key: never a hit.
    sim = np.array([[0.1, 0.0, 0.9, 0.2], [0.9, 0.1, 0.8, 0.0], [0.5, 0.4, 0.3, 0.2]], np.float32)
    rec = clip_metrics.recall_at_k(sim, ["a", "b", "c"], ["x", "b", "a", "a"], ks=(1, 2, 3))
    assert rec == {1: pytest.approx(1 / 3), 2: pytest.approx(1 / 3), 3: pytest.approx(2 / 3)}


def test_recall_rejects_mismatched_keys():
    with pytest.raises(ValueError, match="2 query"):
        clip_metrics.recall_at_k(np.zeros((3, 3)), ["a", "b"], ["a", "b", "c"])


def test_clip_score_and_r_precision_by_hand():
    img = np.array([[1.0, 0.0], [0.0, 1.0]])
    txt = np.array([[0.6, 0.8], [-1.0, 0.0]])  # cosines 0.6 and 0 -> scores 60 and 0
    assert clip_metrics.clip_score(img, txt) == pytest.approx(30.0)
    # Image 0: true 0.6 beats distractors (0.5, 0.0); image 1: true 0.0 loses to 0.3.
    dis = np.array([[[0.5, 0.866], [0.0, 1.0]], [[0.0, 0.3], [1.0, 0.0]]])
    assert clip_metrics.r_precision(img, txt, dis) == pytest.approx(0.5)


def test_best_candidates_by_hand():
    txt = np.array([[1.0, 0.0], [0.0, 1.0]])
    # Prompt 0's candidates have cosines 0.6, 0.8, 0.8 (a tie: the first wins); prompt 1's
    # -1, 0, 0.6.
    img = np.array([[[0.6, 0.8], [0.0, -1.0]], [[0.8, 0.6], [1.0, 0.0]], [[0.8, -0.6], [0.8, 0.6]]])
    np.testing.assert_array_equal(clip_metrics.best_candidates(img, txt), [1, 2])
    with pytest.raises(ValueError, match=r"\[K, N, D\]"):
        clip_metrics.best_candidates(img[:, :1], txt)


class _CountingPipeline(Pipeline):
    """Image v of a ``generate`` call is filled with v; records each call's prompts."""

    def __init__(self, config):
        super().__init__(config)
        self.calls = []

    def init(self, rng, example_batch):
        return None

    def train_step(self, state, batch, rng):
        return state, {}

    def generate(self, state, prompts, rng, **options):
        self.calls.append((list(prompts), options))
        return np.arange(len(prompts), dtype=np.uint8)[:, None, None, None] * np.ones(
            (1, 2, 2, 3), np.uint8
        )


def test_rerank_keeps_the_candidate_nearest_each_prompt(monkeypatch):
    # Two prompts, three candidates each: candidate j of prompt i is image j * 2 + i. The
    # stand-in CLIP puts prompt i on axis i and leans each image away from it by an angle that
    # is smallest for candidate 2 of prompt 0 and candidate 1 of prompt 1.
    lean = {0: 1.0, 2: 0.5, 4: 0.1, 1: 1.0, 3: 0.2, 5: 0.7}

    class Embedder:  # a loaded CLIP run: its pipeline and the TrainedModel both embed
        @property
        def pipeline(self):
            return self

        def embed_texts(self, texts):
            return np.eye(3)[[int(t[1]) for t in texts]]

        def embed_images(self, images):
            v = images[:, 0, 0, 0].astype(int)
            emb = np.eye(3)[v % 2] + np.array([lean[x] for x in v])[:, None] * np.eye(3)[2]
            return emb / np.linalg.norm(emb, axis=1, keepdims=True)

    loaded = []
    config = ml_collections.ConfigDict(
        {
            "sample": {"rerank": 3, "rerank_clip": "runs/clip"},
            "eval": {"clip_workdir": "runs/judge"},
        }
    )
    pipeline = _CountingPipeline(config)
    monkeypatch.setattr(pipeline, "load_run", lambda path: loaded.append(path) or Embedder())
    out = pipeline.rerank(None, ["p0", "p1"], jax.random.key(0), num_steps=7)
    np.testing.assert_array_equal(out[:, 0, 0, 0], [4, 3])
    assert out.shape == (2, 2, 2, 3) and out.dtype == np.uint8
    # One generate call for all candidates, the options passed on; rerank_clip's CLIP, never
    # the evaluation's.
    assert pipeline.calls == [(["p0", "p1"] * 3, {"num_steps": 7})] and loaded == ["runs/clip"]
    # One candidate is generate alone (no CLIP needed); the argument beats the config.
    config.sample.rerank_clip = ""
    np.testing.assert_array_equal(
        pipeline.rerank(None, ["p0", "p1"], jax.random.key(0), candidates=1)[:, 0, 0, 0], [0, 1]
    )
    # No re-ranking CLIP: an error, not a silent fall-back to the evaluation CLIP.
    with pytest.raises(ValueError, match="needs a trained CLIP"):
        pipeline.rerank(None, ["p0"], jax.random.key(0))
    assert loaded == ["runs/clip"]
    with pytest.raises(ValueError, match="at least 1 candidate"):
        pipeline.rerank(None, ["p0"], jax.random.key(0), candidates=0)


def test_distractors_have_other_content():
    keys = ["a", "b", "c", "a"]
    idx = clip_metrics.distractor_indices(["a", "c"], keys, num=5, seed=0)
    assert idx.shape == (2, 5)
    assert all(keys[j] != "a" for j in idx[0]) and all(keys[j] != "c" for j in idx[1])
    with pytest.raises(ValueError, match="other than"):
        clip_metrics.distractor_indices(["a"], ["a", "a"], num=2)


def test_zero_shot_accuracy_counts_ties_as_misses():
    img = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    cands = [
        np.array([[1.0, 0.0], [0.0, 1.0]]),  # true first: correct
        np.array([[1.0, 0.0], [0.0, 1.0]]),  # the other wins: wrong
        np.array([[1.0, 0.0], [1.0, 0.0]]),  # tie: wrong
    ]
    assert clip_metrics.zero_shot_accuracy(img, cands) == pytest.approx(1 / 3)


# -- shapes content and caption variants --------------------------------------------------------
def test_content_key_identifies_mirrored_relations():
    a = {"colour": "red", "shape": "circle", "size": "small"}
    b = {"colour": "blue", "shape": "square", "size": "large"}
    left = {"objects": [a, b], "relation": "left of"}
    right = {"objects": [b, a], "relation": "right of"}
    assert shapes.content_key(left) == shapes.content_key(right)
    assert shapes.content_key(left) != shapes.content_key(
        {"objects": [b, a], "relation": "left of"}
    )


def test_attribute_variants_change_one_attribute():
    truth = shapes.ShapesSource("test").truth(1)
    while truth["relation"] is None:
        truth = shapes.ShapesSource("test").truth(np.random.randint(100))
    variants = shapes.attribute_variants(truth)
    assert set(variants) == {"colour", "shape", "size", "relation"}
    true = shapes.describe(truth["objects"], truth["relation"])
    for attr, captions in variants.items():
        assert captions[0] == true and len(set(captions)) == len(captions)
        for c in captions[1:]:  # exactly one word differs (relations: the relation phrase)
            if attr != "relation":
                assert sum(x != y for x, y in zip(c.split(), true.split(), strict=True)) == 1
    # 2 objects x (6 colours - own - other's) + 2 x 3 shapes + 2 x 1 size + 3 relations.
    assert [len(variants[a]) for a in ("colour", "shape", "size", "relation")] == [9, 7, 3, 4]


_SIZE_WORDS = {"small": "small", "little": "small", "large": "large", "big": "large"}
_ITS = {
    "to its left": "left of",
    "on its left": "left of",
    "to its right": "right of",
    "on its right": "right of",
    "above it": "above",
    "below it": "below",
    "under it": "below",
}
_RELS = {
    "left of": "left of",
    "right of": "right of",
    "above": "above",
    "over": "above",
    "below": "below",
    "under": "below",
    "beneath": "below",
}


def _parse(caption):
    """(objects, relation) read back from any caption template, by hand, for the tests."""
    found = re.findall(r"(small|little|large|big) (\w+) (circle|square|triangle|diamond)", caption)
    objects = [{"colour": c, "shape": s, "size": _SIZE_WORDS[z]} for z, c, s in found]
    if len(objects) == 1:
        return objects, None
    for phrase, rel in _ITS.items():
        if caption.endswith(phrase):  # "a B with a A to its left": A left of B
            return objects[::-1], rel
    middle = caption.split(found[0][2], 1)[1].rsplit(found[1][0], 1)[0]
    (rel,) = {r for w, r in _RELS.items() if re.search(rf"\b{w}\b", middle)}
    return objects, rel


def test_captions_read_back_to_their_truth():
    # Every template, "a B with a A to its left" included, states the truth's content.
    source = shapes.ShapesSource("train")
    for i in range(400):
        truth = source.truth(i)
        objects, relation = _parse(truth["caption"])
        assert shapes.content_key({"objects": objects, "relation": relation}) == (
            shapes.content_key(truth)
        ), truth["caption"]


def test_parse_labels_need_shapes_and_train_only():
    from jaxgen import data

    config = ml_collections.ConfigDict(dict(name="digits", image_size=16, max_text_len=32))
    config.parse_labels = True
    with pytest.raises(ValueError, match="parse_labels needs a dataset with ground truth"):
        data.build_source(config, "train")
    config.name = "shapes"
    assert data.build_source(config, "train").parse_labels
    assert not data.build_source(config, "test").parse_labels  # training only


# -- the model ----------------------------------------------------------------------------------
def test_clip_shapes_dtypes_and_unit_norm():
    model = CLIP(
        embed_dim=16,
        text=dict(width=32, depth=1, num_heads=2, max_len=16),
        image_widths=(8, 16),
        image_dim=24,
    )
    images = jnp.zeros((3, 16, 16, 3))
    tokens = jnp.ones((3, 16), jnp.int32)
    variables = model.init(jax.random.key(0), images, tokens)
    img, txt, scale = model.apply(variables, images + 0.5, tokens)
    chex.assert_shape([img, txt], (3, 16))
    chex.assert_type([img, txt], jnp.float32)
    np.testing.assert_allclose(np.linalg.norm(img, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(scale, np.log(1 / 0.07), rtol=1e-6)


def test_image_encoder_keeps_position():
    # Flattening (not averaging) the last feature map: a shifted image embeds differently.
    enc = ImageEncoder(widths=(4, 8), out_dim=8)
    x = np.zeros((2, 16, 16, 3), np.float32)
    x[0, 2:6, 2:6] = 1.0
    x[1, 10:14, 10:14] = 1.0
    variables = enc.init(jax.random.key(0), x)
    out = enc.apply(variables, x)
    chex.assert_shape(out, (2, 8))
    assert np.abs(out[0] - out[1]).max() > 1e-3


def _scene(colour, shape, x0=6, y0=4, size=12):
    """One object on the black canvas, as float [-1, 1] ``[1, 32, 32, 3]``."""
    box = (x0, y0, x0 + size, y0 + size)
    image = shapes.render_scene([{"colour": colour, "shape": shape, "box": box}], 32)
    return jnp.asarray(image[None], jnp.float32) / 127.5 - 1.0


def _fc_rows(variables, keep):
    """A copy of ``variables`` whose ``fc`` kernel keeps only the rows where ``keep`` is True."""
    fc = variables["params"]["fc"]
    fc = {**fc, "kernel": jnp.where(keep[:, None], fc["kernel"], 0.0)}
    return {"params": {**variables["params"], "fc": fc}}


def test_factorised_tower_reads_shape_blind_to_colour_and_colour_per_cell():
    enc = ImageEncoder(widths=(4, 8), out_dim=16, patch_size=2, colour="factorised")
    red_tri, yellow_tri = _scene("red", "triangle"), _scene("yellow", "triangle")
    variables = enc.init(jax.random.key(0), red_tri)
    # One input channel per (2x2-folded) colour plane: the filters do not know the colour.
    assert variables["params"]["conv0_a"]["kernel"].shape[2] == 4
    # Flattened input of fc: an 8x8 map (32 / 2 fold / 2 stride) of 8 shape + 3 colour features.
    assert variables["params"]["fc"]["kernel"].shape == (8 * 8 * (8 + 3), 16)
    is_colour = np.tile(np.arange(8 + 3) >= 8, 8 * 8)
    # Shape features alone: red, yellow and magenta triangles (one, two, two lit planes) give
    # the same output; a square does not.
    shape_only = _fc_rows(variables, ~is_colour)
    outs = {c: enc.apply(shape_only, _scene(c, "triangle")) for c in ("red", "yellow", "magenta")}
    np.testing.assert_allclose(outs["red"], outs["yellow"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs["red"], outs["magenta"], rtol=1e-5, atol=1e-5)
    assert np.abs(outs["red"] - enc.apply(shape_only, _scene("red", "square"))).max() > 1e-3
    # Colour features alone: fc sees each 4x4 cell's per-channel maximum, computed here with
    # numpy from the pixels, so the output is gelu(cell_max @ W + b) then LayerNorm.
    colour_only = _fc_rows(variables, is_colour)
    for image in (red_tri, yellow_tri, _scene("cyan", "diamond", x0=17, y0=15, size=9)):
        cells = np.asarray(image[0]).reshape(8, 4, 8, 4, 3).max(axis=(1, 3)).reshape(-1)
        fc = variables["params"]["fc"]
        h = jax.nn.gelu(cells @ np.asarray(fc["kernel"])[is_colour] + np.asarray(fc["bias"]))
        want = (h - h.mean()) / np.sqrt(h.var() + 1e-6)
        np.testing.assert_allclose(enc.apply(colour_only, image)[0], want, atol=1e-4)
    # Both together: the colour tells the red triangle from the yellow one.
    assert np.abs(enc.apply(variables, red_tri) - enc.apply(variables, yellow_tri)).max() > 1e-3


def test_image_tower_refuses_unknown_colour_mode_and_odd_sizes():
    x = jnp.zeros((1, 32, 32, 3))
    with pytest.raises(ValueError, match="colour mode 'rgb'; valid: joint, factorised"):
        ImageEncoder(widths=(4,), out_dim=8, colour="rgb").init(jax.random.key(0), x)
    odd = jnp.zeros((1, 30, 30, 3))  # 30 -> 15 -> 8: cells of the final map are not whole
    with pytest.raises(ValueError, match="multiple of the final feature map"):
        ImageEncoder(widths=(4, 4, 4), out_dim=8, colour="factorised").init(jax.random.key(0), odd)


def test_image_colour_of_configs_without_the_key_is_joint():
    from jaxgen.config import load_experiment
    from jaxgen.pipelines.clip import build_model

    config = load_experiment("experiments/clip.py:smoke")
    assert build_model(config).image_colour == "factorised"
    del config.model["image_colour"]
    assert build_model(config).image_colour == "joint"


def _pair_features(pairs, kind):
    """One row per (colour, shape): one-hot colour and shape, or one one-hot per pair."""
    rows = []
    for colour, shape in pairs:
        if kind == "factorised":
            v = np.zeros(10)
            v[shapes.COLOUR_NAMES.index(colour)] = v[6 + shapes.SHAPES.index(shape)] = 1.0
        else:
            v = np.zeros(len(shapes.ALL_PAIRS))
            v[shapes.ALL_PAIRS.index((colour, shape))] = 1.0
        rows.append(v)
    return np.stack(rows)


def test_probe_accuracy_transfers_only_a_factorised_embedding():
    train, held = list(shapes.TRAIN_PAIRS) * 5, list(shapes.HELDOUT_PAIRS) * 5
    accuracy = {
        kind: clip_metrics.probe_accuracy(
            _pair_features(train, kind),
            [s for _, s in train],
            _pair_features(held, kind),
            [s for _, s in held],
        )
        for kind in ("factorised", "conjunctive")
    }
    # Separate colour and shape directions carry the shape probe to unseen pairs; a direction
    # per pair leaves the probe nothing but its bias there (one class: a quarter of the shapes).
    assert accuracy["factorised"] == 1.0
    assert accuracy["conjunctive"] <= 0.25


# -- the pipeline end to end --------------------------------------------------------------------
@pytest.fixture
def clip_workdir(clip_smoke_workdir):
    return clip_smoke_workdir


def test_clip_smoke_run_writes_its_evaluation(clip_workdir):
    results = json.loads((clip_workdir / "eval.json").read_text())
    for split in ("test", "heldout"):
        for key in (
            "t2i_recall@1",
            "t2i_recall@5",
            "i2t_recall@1",
            "zero_shot_colour",
            "zero_shot_shape",
            "zero_shot_size",
            "zero_shot_relation",
        ):
            assert 0.0 <= results[f"{split}/{key}"] <= 1.0
        assert results[f"{split}/t2i_recall@5"] >= results[f"{split}/t2i_recall@1"]
    assert list((clip_workdir / "samples").glob("*.png"))


def test_clip_api_embeds_and_retrieves(clip_workdir):
    import jaxgen

    model = jaxgen.load(clip_workdir)
    txt = model.embed_texts(["a large red circle", "a small blue square"])
    img = model.embed_images(np.zeros((3, 16, 16, 3), np.uint8))
    assert txt.shape == (2, 32) and img.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=-1), 1.0, rtol=1e-5)
    # Retrieval returns gallery images, each the best match of its prompt.
    out = model.generate(["a large red circle"])
    gallery = model.pipeline.gallery()
    best = np.argmax(model.embed_texts(["a large red circle"]) @ model.embed_images(gallery).T)
    np.testing.assert_array_equal(out[0], gallery[best])
    with pytest.raises(ValueError, match="uint8"):
        model.embed_images(np.zeros((1, 32, 32, 3), np.uint8))


def test_ddpm_takes_a_frozen_clip_text_encoder(clip_workdir, tmp_path):
    import jaxgen
    from jaxgen.pipelines.pretrained import text_encoder_params

    workdir = tmp_path / "ddpm"
    proc = run_cli(
        "--config=experiments/ddpm.py:smoke",
        f"--workdir={workdir}",
        f"--config.model.text_init={clip_workdir}",
        "--config.model.text.causal=False",  # clip.py:smoke's attention
        "--config.model.freeze_text=True",
        "--config.train.steps=4",
        f"--config.sample.rerank_clip={clip_workdir}",
        "--config.sample.rerank=2",  # the final evaluation also judges the best of 2
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = jaxgen.load(workdir).state.params["unet"]["text_encoder"]
    clip_text = text_encoder_params(jaxgen.load(clip_workdir))
    chex.assert_trees_all_close(trained, clip_text, rtol=0, atol=0)
    results = json.loads((workdir / "eval.json").read_text())
    # No evaluation CLIP in the smoke config: the re-ranking CLIP does not score.
    assert "test/r_precision" not in results and "test/best_of_2/r_precision" not in results
    assert {"test/colour", "test/best_of_2/colour"} <= set(results)


def test_ddpm_rejects_a_clip_text_encoder_of_another_shape(clip_workdir, tmp_path):
    proc = run_cli(
        "--config=experiments/ddpm.py:smoke",
        f"--workdir={tmp_path / 'ddpm'}",
        f"--config.model.text_init={clip_workdir}",
        "--config.model.text.causal=False",
        "--config.model.text.width=64",
    )
    assert proc.returncode != 0 and "same text settings" in proc.stderr


def test_text_encoder_loading_checks_causal(clip_workdir):
    import jaxgen
    from jaxgen.pipelines.pretrained import text_encoder_params

    run = jaxgen.load(clip_workdir)
    causal = bool(json.loads((clip_workdir / "config.json").read_text())["model"]["text"]["causal"])
    text_encoder_params(run, causal=causal)
    with pytest.raises(ValueError, match="model.text.causal"):
        text_encoder_params(run, causal=not causal)


def test_clip_config_variants_pick_the_image_colour_mode():
    from jaxgen.config import load_experiment

    assert load_experiment("experiments/clip.py").model.image_colour == "factorised"
    assert load_experiment("experiments/clip.py:joint,smoke").model.image_colour == "joint"
    assert load_experiment("experiments/clip.py:digits").model.image_colour == "joint"
    # DDPM conditions on the joint-tower CLIP's text encoder (docs/results/ddpm.md: better colours).
    assert load_experiment("experiments/ddpm.py").pretrain.clip == "clip:joint,parse"
    with pytest.raises(ValueError, match="any of joint, parse, eval, smoke"):
        load_experiment("experiments/clip.py:colour")


# -- caption parsing (model.parse_weight) -------------------------------------------------------
def test_parse_labels_by_hand():
    red = {"colour": "red", "shape": "circle", "size": "small"}
    blue = {"colour": "blue", "shape": "square", "size": "large"}
    # colour (red 0, blue 2), shape (circle 0, square 1), size (small 0, large 1); the "b"
    # fields' last class is "none"; axis 0 none, 1 horizontal, 2 vertical.
    assert [k for _, k in shapes.PARSE_FIELDS] == [6, 4, 2, 7, 5, 3, 3]
    np.testing.assert_array_equal(
        shapes.parse_labels({"objects": [red], "relation": None}), [0, 0, 0, 6, 4, 2, 0]
    )
    # The left (upper) object comes first, whichever the caption names first.
    blue_left = [2, 1, 1, 0, 0, 0, 1]
    for objects, relation in (([blue, red], "left of"), ([red, blue], "right of")):
        got = shapes.parse_labels({"objects": objects, "relation": relation})
        np.testing.assert_array_equal(got, blue_left)
        assert got.dtype == np.int32
    np.testing.assert_array_equal(
        shapes.parse_labels({"objects": [red, blue], "relation": "below"}), [2, 1, 1, 0, 0, 0, 2]
    )
    np.testing.assert_array_equal(
        shapes.parse_labels({"objects": [red, blue], "relation": "above"}), [0, 0, 0, 2, 1, 1, 2]
    )


def test_parse_labels_follow_the_examples():
    plain, parsed = shapes.ShapesSource("train"), shapes.ShapesSource("train", parse_labels=True)
    for i in (0, 3, 50):
        a, b = plain[i], parsed[i]
        assert set(b) == {"image", "tokens", "parse"}
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
        np.testing.assert_array_equal(b["parse"], shapes.parse_labels(parsed.truth(i)))


def test_parse_heads_read_the_pooled_text_state():
    from jaxgen.models.text_encoder import TextEncoder

    text = dict(width=32, depth=1, num_heads=2, max_len=16)
    model = CLIP(embed_dim=16, text=text, image_widths=(8, 16), image_dim=24, parse_classes=(3, 5))
    images = jnp.zeros((2, 16, 16, 3))
    tokens = jnp.asarray(np.stack([encode("a red circle", 16), encode("a blue square", 16)]))
    params = model.init(jax.random.key(0), images, tokens)["params"]
    chex.assert_shape(
        [params["parse_0"]["kernel"], params["parse_1"]["kernel"]], [(32, 3), (32, 5)]
    )
    img, txt, scale, logits = model.apply({"params": params}, images, tokens)
    chex.assert_shape(list(logits), [(2, 3), (2, 5)])
    # The same as a separately applied TextEncoder's pooled state times each head by hand.
    _, pooled, _ = TextEncoder(**text).apply({"params": params["text"]["encoder"]}, tokens)
    for i, lg in enumerate(logits):
        head = params[f"parse_{i}"]
        np.testing.assert_allclose(lg, pooled @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(txt, model.apply({"params": params}, tokens, method=CLIP.embed_text))
    # Without parse classes the model has no heads and returns three items, as before.
    plain = CLIP(embed_dim=16, text=text, image_widths=(8, 16), image_dim=24)
    assert len(plain.apply(plain.init(jax.random.key(0), images, tokens), images, tokens)) == 3


def test_parse_loss_matches_numpy():
    from jaxgen.pipelines.clip import parse_loss

    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(4, 3)), rng.normal(size=(4, 2))]
    labels = np.array([[0, 1], [2, 0], [1, 1], [0, 0]])

    def xent(m, y):
        return np.mean([np.log(np.exp(row).sum()) - row[t] for row, t in zip(m, y, strict=True)])

    loss, accuracy = parse_loss([jnp.asarray(lg) for lg in logits], jnp.asarray(labels))
    want = 0.5 * (xent(logits[0], labels[:, 0]) + xent(logits[1], labels[:, 1]))
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    both = (logits[0].argmax(1) == labels[:, 0]) & (logits[1].argmax(1) == labels[:, 1])
    assert accuracy == pytest.approx(both.mean())


def test_clip_step_adds_the_weighted_parse_loss():
    from jaxgen.config import load_experiment
    from jaxgen.data.pixels import to_model_space
    from jaxgen.pipelines import build_pipeline
    from jaxgen.pipelines.clip import contrastive_loss

    config = load_experiment("experiments/clip.py:parse,smoke")
    # Only causal attention learned to parse in the measured budget (the CLIP log), smoke or not.
    assert config.model.parse_weight > 0 and config.data.parse_labels and config.model.text.causal
    config.model.parse_weight = 0.5
    pipeline = build_pipeline(config)
    source = shapes.ShapesSource("train", image_size=16, max_text_len=64, parse_labels=True)
    items = [source[i] for i in range(6)]
    batch = {k: jnp.asarray(np.stack([it[k] for it in items])) for k in items[0]}
    state = jax.jit(pipeline.init)(jax.random.key(0), batch)
    params = state.params["clip"]
    _, metrics = jax.jit(pipeline.train_step)(state, batch, jax.random.key(1))
    # Recomputed from the model's outputs: cross-entropy per field in numpy, then their mean.
    img, txt, scale, logits = jax.jit(pipeline.model.apply)(
        {"params": params}, to_model_space(batch["image"]), batch["tokens"]
    )
    ce = parse_cross_entropy(logits, batch["parse"])
    contrastive, _ = contrastive_loss(img, txt, scale)
    np.testing.assert_allclose(metrics["parse_loss"], ce, rtol=1e-4)
    np.testing.assert_allclose(metrics["loss"], contrastive + 0.5 * ce, rtol=1e-4)
    assert 0.0 <= metrics["batch_parse_accuracy"] <= 1.0
    # The evaluation's parse accuracy: captions whose every field's argmax is the label.
    config.eval.batch_size = 16
    results = build_pipeline(config).evaluate_embeddings(state, plan=EvalPlan(("test",), 16, True))
    captions, truths, _ = pipeline.judge.prompts("test", int(config.eval.num_samples), seed=0)
    tokens = jnp.asarray(np.stack([encode(c, 64) for c in captions]))
    parse_text = jax.jit(
        lambda p, t: pipeline.model.apply({"params": p}, t, method=CLIP.parse_text)
    )
    _, logits = parse_text(state.ema_params["clip"], tokens)
    got = np.stack([np.argmax(lg, -1) for lg in logits], -1)
    want = np.stack([shapes.parse_labels(t) for t in truths])
    assert results["test/parse_accuracy"] == pytest.approx(np.mean(np.all(got == want, -1)))
    # Asking for the heads without the labels is a clear error.
    config.data.parse_labels = False
    with pytest.raises(ValueError, match="data.parse_labels=True"):
        build_pipeline(config)
    with pytest.raises(ValueError, match="'parse' needs the shapes dataset"):
        load_experiment("experiments/clip.py:digits,parse")


@pytest.mark.parametrize("variant", ["", "smoke", "digits", "digits,smoke"])
def test_ddpm_text_settings_match_the_clip_it_pretrains(variant):
    # "pretrain:clip" loads that CLIP's text encoder into the UNet, which checks shapes and
    # attention when it runs; this checks every shipped variant without training anything.
    from jaxgen.config import load_experiment

    ddpm = load_experiment("experiments/ddpm.py" + (f":{variant}" if variant else ""))
    clip = load_experiment(ddpm.pretrain.clip)  # as config.pretrain's training loads it
    assert clip.model.text.to_dict() == ddpm.model.text.to_dict()
    assert clip.data.max_text_len == ddpm.data.max_text_len
