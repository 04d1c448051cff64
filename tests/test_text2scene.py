"""Text2Scene: the `scenes` dataset (renderer, grammar), the metrics, the model's parts, the
losses, decoding and the CLI."""

import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import copy_workdir, experiment_config, run_cli, shared_config_run

import jaxgen
from jaxgen.data import abstract_scenes, scenes, shapes, shapes_layout
from jaxgen.data.tokenizer import PromptError
from jaxgen.evaluation import scene_metrics
from jaxgen.models.text2scene import Text2Scene
from jaxgen.pipelines import build_pipeline, text2scene

S = 64
SMOKE = "--config=experiments/text2scene.py:smoke"


def _obj(name, x, y, size="large", flip=0, pose=None, expression=None):
    if name in scenes.PEOPLE:
        pose, expression = pose or "standing", expression or "smiling"
    return dict(name=name, x=x, y=y, size=size, flip=flip, pose=pose, expression=expression)


# -- the renderer -------------------------------------------------------------------------------
def test_an_object_is_drawn_where_and_as_the_scene_says():
    bank = scenes.sprite_bank(S)
    sun = _obj("sun", 3, 4)
    image = scenes.render_scene([sun], S)
    background = scenes.background(S)
    changed = np.argwhere((image != background).any(-1))
    h, w = scenes.sprite_size("sun", "large", S)
    top, left = bank.top_left(bank.sprite_id(sun), 3, 4)
    # The changed pixels lie in the sprite's box, which is centred on the cell's centre ...
    assert changed[:, 0].min() >= top and changed[:, 0].max() < top + h
    assert changed[:, 1].min() >= left and changed[:, 1].max() < left + w
    cy, cx = (4 + 0.5) * S / scenes.GRID, (3 + 0.5) * S / scenes.GRID
    assert abs(top + h / 2 - cy) <= 1 and abs(left + w / 2 - cx) <= 1
    # ... and the sun is drawn in its colour at its centre.
    np.testing.assert_array_equal(image[int(cy), int(cx)], scenes._C["sun"])
    small = scenes.render_scene([dict(sun, size="small")], S)
    assert (small != background).any(-1).sum() < (image != background).any(-1).sum()


def test_later_objects_occlude_earlier_ones():
    tree, ball = _obj("tree", 8, 10), _obj("ball", 8, 10)
    front = scenes.render_scene([tree, ball], S)
    back = scenes.render_scene([ball, tree], S)
    c = int((10 + 0.5) * S / scenes.GRID), int((8 + 0.5) * S / scenes.GRID)
    assert tuple(front[c]) in (scenes._C["ball"], scenes._C["white"])  # the ball, in front
    assert tuple(back[c]) in (scenes._C["trunk"], scenes._C["leaves"])  # hidden by the tree


def test_flip_mirrors_the_sprite():
    bank = scenes.sprite_bank(S)
    for name in sorted(scenes.FLIPPABLE):
        left = bank.sprites[bank.sprite_id(_obj(name, 8, 10, flip=0))]
        right = bank.sprites[bank.sprite_id(_obj(name, 8, 10, flip=1))]
        h, w = scenes.sprite_size(name, "large", S)
        np.testing.assert_array_equal(right[:h, :w], left[:h, :w][:, ::-1])
        assert not np.array_equal(right[:h, :w], left[:h, :w])  # the sprites are asymmetric
    # Types without a flip have one sprite for both.
    assert bank.sprite_id(_obj("sun", 1, 1, flip=1)) == bank.sprite_id(_obj("sun", 1, 1))


def test_poses_and_expressions_are_different_sprites():
    bank = scenes.sprite_bank(S)
    ids = {
        bank.sprite_id(_obj("girl", 5, 10, pose=p, expression=e))
        for p in scenes.POSES
        for e in scenes.EXPRESSIONS
    }
    assert len(ids) == 9
    sprites = np.stack([bank.sprites[i] for i in ids])
    assert len({s.tobytes() for s in sprites}) == 9


def test_jax_renderer_matches_numpy():
    canvas = scenes.JaxCanvas(scenes.sprite_bank(S))
    source = scenes.ScenesSource("train", S)
    for i in range(8):
        truth, arrays = source.truth(i), source[i]
        sprites = canvas.sprite_ids(
            jnp.asarray(arrays["objects"]), jnp.asarray(arrays["attributes"])
        )
        loc = arrays["locations"]
        steps = jax.jit(canvas.render_steps)(
            sprites, loc % scenes.GRID, loc // scenes.GRID, arrays["objects"] < scenes.END
        )
        n = len(truth["objects"])
        for k in range(n + 1):
            np.testing.assert_array_equal(
                np.asarray(steps[k]), scenes.render_scene(truth["objects"][:k], S)
            )
        np.testing.assert_array_equal(np.asarray(steps[-1]), arrays["image"])


# -- the dataset --------------------------------------------------------------------------------
@pytest.mark.parametrize("split", list(scenes.SPLITS))
def test_captions_parse_back_to_their_scenes(split):
    for i in range(300):
        truth = scenes.sample_truth(split, i)
        assert scenes.parse_caption(truth["caption"]) == scenes.content(truth), truth["caption"]


def test_parse_rejects_sentences_outside_the_grammar():
    with pytest.raises(ValueError, match="place"):
        scenes.parse_caption("a dog is somewhere facing left .")


def test_scenes_are_deterministic_ordered_and_held_out_combinations_stay_out():
    a, b = scenes.sample_truth("train", 5, seed=3), scenes.sample_truth("train", 5, seed=3)
    assert a == b and a != scenes.sample_truth("train", 6, seed=3)

    def combos(truth):
        return {(o["name"], o[f]) for o in truth["objects"] for f in ("size", "pose", "expression")}

    held = set(scenes.HELDOUT_COMBOS)
    for split in ("train", "val", "test"):
        for i in range(400):
            truth = scenes.sample_truth(split, i)
            names = [o["name"] for o in truth["objects"]]
            assert names == scenes.draw_order(names) and len(set(names)) == len(names)
            assert scenes.MIN_OBJECTS <= len(names) <= scenes.MAX_OBJECTS
            assert not combos(truth) & held
    for split in scenes.HELDOUT_SPLITS:
        assert all(combos(scenes.sample_truth(split, i)) & held for i in range(200))


def test_every_description_fits_the_word_budget():
    lengths = [
        len(scenes.split_words(scenes.sample_truth(split, i)["caption"]))
        for split in ("train", "heldout")
        for i in range(3000)
    ]
    assert max(lengths) <= scenes.MAX_WORDS
    assert experiment_config("text2scene").data.max_text_len == scenes.MAX_WORDS


def test_source_arrays_round_trip_and_the_loop_can_batch_them():
    source = scenes.ScenesSource("val", S)
    item = source[3]
    assert item["image"].shape == (S, S, 3) and item["image"].dtype == np.uint8
    assert item["tokens"].shape == (scenes.MAX_WORDS,) and item["tokens"].dtype == np.int32
    t = scenes.MAX_OBJECTS + 1
    chex.assert_shape([item["objects"], item["locations"], item["steps"]], (t,))
    chex.assert_shape(item["attributes"], (t, len(scenes.ATTRIBUTES)))
    objects = scenes.objects_from_arrays(item["objects"], item["attributes"], item["locations"])
    assert objects == source.truth(3)["objects"]
    assert item["steps"].sum() == len(objects) + 1
    json.dumps(objects)  # JSON-friendly


def test_bad_descriptions_get_clear_errors():
    with pytest.raises(PromptError, match="unknown word.*'unicorn'"):
        scenes.encode_words("a unicorn is on the left .", 72)
    with pytest.raises(PromptError, match="empty"):
        scenes.encode_words("  . ", 72)
    with pytest.raises(PromptError, match="80 words; at most 72"):
        scenes.encode_words("a dog " * 40, 72)
    with pytest.raises(PromptError, match="must be a str"):
        scenes.encode_words(None, 72)
    with pytest.raises(ValueError, match="image_size >= 32"):
        scenes.ScenesSource("train", 16)


# -- layouts on shapes ------------------------------------------------------------------------
def test_shapes_layouts_drawn_from_the_grid_read_as_their_captions():
    """The layout of a truth (shape, colour, size, the cell of the box's centre) rendered by the
    sprites is what the shapes judge reads from the caption: the grid loses nothing it reads."""
    from jaxgen.evaluation import shapes_judge

    source = shapes_layout.ShapesLayoutSource("test", 32, max_text_len=24)
    truths = [source.truth(i) for i in range(200)]
    images = np.stack([shapes_layout.render(t["layout"], 32) for t in truths])
    outcomes = shapes_judge.judge_outcomes(images, truths)
    assert all(np.all(v) for v in outcomes.values()), {k: v.mean() for k, v in outcomes.items()}
    item = source[0]
    assert item["tokens"].shape == (24,) and item["objects"].shape == (3,)
    back = shapes_layout.objects_from_arrays(item["objects"], item["attributes"], item["locations"])
    assert back == truths[0]["layout"]
    for split in shapes_layout.SPLITS:  # every caption's words are in the vocabulary
        src = shapes_layout.ShapesLayoutSource(split, 32, max_text_len=24)
        pixels = shapes.ShapesSource(split, 32)  # the captions the pixel models read
        for i in range(300):
            truth = src.truth(i)
            assert truth["caption"] == pixels.truth(i)["caption"]
            shapes_layout.encode_words(truth["caption"], 24)


def test_the_pipeline_composes_shapes_layouts_and_judges_them():
    config = experiment_config("text2scene", "shapes,smoke")
    assert config.data.name == "shapes_layouts"
    pipe = build_pipeline(config)
    source = shapes_layout.ShapesLayoutSource("train", 32, max_text_len=24)
    items = [source[i] for i in range(4)]
    batch = {k: jnp.asarray(np.stack([it[k] for it in items])) for k in items[0]}
    state = pipe.init(jax.random.key(0), batch)
    state, metrics = jax.jit(pipe.train_step)(state, batch, jax.random.key(1))
    assert np.isfinite(float(metrics["loss"]))
    images = pipe.generate(
        state, ["a large red circle left of a small blue square"], jax.random.key(0)
    )
    assert images.shape == (1, 32, 32, 3) and images.dtype == np.uint8
    from jaxgen.pipelines.base import EvalPlan

    results = {}
    for evaluator in pipe.evaluators(EvalPlan(("test",), 4, True)):
        results.update(evaluator(state, jax.random.key(2)))
    assert "test/u_precision" in results
    assert "test/shape" in results and "test/colour_chance" in results
    with pytest.raises(PromptError, match="unknown word"):
        pipe.generate(state, ["a purple circle"], jax.random.key(0))


# -- the Abstract Scenes and word-vector readers ------------------------------------------------
def _write_abstract_scenes(root):
    (root / "SimpleSentences").mkdir(parents=True)
    # Class 0 has two scenes (0 and 1), class 800 one (scene 8000, in the test split).
    (root / abstract_scenes.SCENE_FILE).write_text(
        "3\n"
        "0 2\n"
        "hb0_12.png 2 0 250 300 1 0\n"
        "s_3.png 0 3 100 50 2 1\n"
        "0 1\n"
        "t_4.png 7 4 400 350 0 1\n"
        "800 1\n"
        "hb1_3.png 3 1 120 310 2 0\n"
    )
    (root / abstract_scenes.SENTENCE_FILES[0]).write_text(
        "0 0 Mike is happy.\n0 1 The sun is out.\n0 2 Mike waves.\n0 3 Extra.\n8000 0 Jenny sits.\n"
    )
    (root / abstract_scenes.SENTENCE_FILES[1]).write_text("0 0 A boy stands.\n1 0 A ball.\n")


def test_abstract_scenes_reader_on_files_in_the_published_layout(tmp_path):
    _write_abstract_scenes(tmp_path)
    scenes_by_index = abstract_scenes.read_scene_file(tmp_path / abstract_scenes.SCENE_FILE)
    assert sorted(scenes_by_index) == [0, 1, 8000]
    boy, sun = scenes_by_index[0]
    assert boy == dict(png="hb0_12", name="boy", pose=2, expression=2, x=250, y=300, z=1, flip=0)
    assert sun["name"] == "s_3" and sun["pose"] is None and sun["flip"] == 1
    assert scenes_by_index[8000][0]["name"] == "girl" and scenes_by_index[8000][0]["pose"] == 0
    train = abstract_scenes.load(tmp_path, "train")
    # Scene 0 twice (two sentence groups, at most 3 sentences each), scene 1 once.
    assert [(e["scene"], e["caption"]) for e in train] == [
        (0, "Mike is happy. The sun is out. Mike waves."),
        (0, "A boy stands."),
        (1, "A ball."),
    ]
    assert [o["name"] for o in train[0]["objects"]] == ["s_3", "boy"]  # sky first
    assert [e["scene"] for e in abstract_scenes.load(tmp_path, "test")] == [8000]
    assert abstract_scenes.vocabulary(train) == ["boy", "s_3", "t_4"]
    # Test: 8000-8999; of the other scenes the first 8,500 train, the rest validation.
    splits = [abstract_scenes.split_of(i) for i in (7999, 8500, 9499, 9500, 10019)]
    assert splits == ["train", "test", "train", "val", "val"]
    assert abstract_scenes.to_grid(499, 399) == (27, 27) and abstract_scenes.to_grid(0, 0) == (0, 0)


def test_abstract_scenes_reader_names_the_bad_line(tmp_path):
    _write_abstract_scenes(tmp_path)
    path = tmp_path / abstract_scenes.SCENE_FILE
    path.write_text(path.read_text().replace("s_3.png 0 3 100 50 2 1", "s_3.png 0 3 100"))
    with pytest.raises(abstract_scenes.AbstractScenesError, match=r"Scenes_10020.txt:4"):
        abstract_scenes.read_scene_file(path)
    with pytest.raises(FileNotFoundError, match="AbstractScenes_v1.1"):
        abstract_scenes.load(tmp_path / "nowhere", "train")


def test_word_vector_reader_and_warm_start(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("dog 0.5 -1.0 2.0\nunused 1 1 1\nsun 0.25 0.0 1.0\n")
    vocab = ["<pad>", "dog", "cat", "sun"]
    vectors, found = abstract_scenes.read_word_vectors(path, vocab)
    np.testing.assert_allclose(vectors[1], [0.5, -1.0, 2.0])
    np.testing.assert_allclose(vectors[3], [0.25, 0.0, 1.0])
    np.testing.assert_array_equal(found, [False, True, False, True])
    np.testing.assert_array_equal(vectors[0], 0.0)
    bad = tmp_path / "bad.txt"
    bad.write_text("dog 1 2 3\nsun 1 2\n")
    with pytest.raises(ValueError, match="bad.txt:2: 2 values, but the first line has 3"):
        abstract_scenes.read_word_vectors(bad, vocab)
    # The pipeline loads them into its word embedding.
    glove = tmp_path / "scenes_glove.txt"
    rng = np.random.default_rng(0)
    glove.write_text(
        "".join(
            f"{w} {' '.join(f'{v:.4f}' for v in rng.normal(size=16))}\n" for w in scenes.VOCAB[1:]
        )
    )
    config = experiment_config("text2scene", "smoke")
    config.model.word_vectors = str(glove)
    pipe = build_pipeline(config)
    item = scenes.ScenesSource("train", 32)[0]
    state = pipe.warm_start(pipe.init(jax.random.key(0), {k: v[None] for k, v in item.items()}))
    table = np.asarray(state.params["text2scene"]["text"]["embed"]["embedding"])
    expected, _ = abstract_scenes.read_word_vectors(glove, list(scenes.VOCAB))
    np.testing.assert_allclose(table, expected)
    config.model.network.embed_dim = 8
    with pytest.raises(ValueError, match="embed_dim=16"):
        pipe = build_pipeline(config)
        pipe.warm_start(pipe.init(jax.random.key(0), {k: v[None] for k, v in item.items()}))


# -- the metrics --------------------------------------------------------------------------------
def _scores(pred, truth, grid=16, size=0.1):
    return scene_metrics.scene_scores(
        pred,
        truth,
        categories=scenes.OBJECTS,
        grid=grid,
        box_of=lambda o: (size, size),
        attributes=("size", "pose"),
        applies=scenes.applies,
    )


def test_unigram_precision_recall_and_coordinates_on_hand_made_scenes():
    truth = [_obj("sun", 2, 2), _obj("boy", 8, 10), _obj("dog", 12, 11)]
    # A perfect scene.
    s = _scores(truth, truth)
    assert s["u_precision"] == s["u_recall"] == 1.0 and s["u_coord"] == pytest.approx(1.0)
    # Two of three found, one extra object, the boy one cell to the right in a grid of 16.
    pred = [_obj("sun", 2, 2), _obj("boy", 9, 10, pose="waving"), _obj("cat", 4, 10)]
    s = _scores(pred, truth)
    assert s["u_precision"] == pytest.approx(2 / 3) and s["u_recall"] == pytest.approx(2 / 3)
    off = math.exp(-0.5 * ((1 / 16) / 0.2) ** 2)
    assert s["u_coord"] == pytest.approx((1.0 + off) / 2)
    assert s["size"] == (2, 2) and s["pose"] == (0, 1)  # pose counts the boy alone
    s = _scores([], truth)
    assert s["u_precision"] == s["u_recall"] == 0.0


def test_bigrams_need_overlapping_boxes_and_matching_categories():
    # Boxes of width 0.1: cells 8 and 9 (centres 1/16 apart) overlap, cells 2 and 12 do not.
    truth = [_obj("boy", 8, 10), _obj("dog", 9, 10), _obj("sun", 2, 2)]
    s = _scores(truth, truth)
    assert s["b_precision"] == s["b_recall"] == 1.0 and s["b_coord"] == pytest.approx(1.0)
    # The dog moved away: no bigram predicted, the true one is missed.
    s = _scores([_obj("boy", 8, 10), _obj("dog", 14, 10), _obj("sun", 2, 2)], truth)
    assert s["b_precision"] == 0.0 and s["b_recall"] == 0.0
    # The dog on the other side: the pair matches by category; its angle is half a turn away.
    s = _scores([_obj("boy", 8, 10), _obj("dog", 7, 10), _obj("sun", 2, 2)], truth)
    assert s["b_precision"] == s["b_recall"] == 1.0
    assert s["b_coord"] == pytest.approx(math.exp(-0.5 * (0.5 / 0.2) ** 2))
    # A truth without bigrams leaves the scene out of the B-obj means.
    far = [_obj("boy", 2, 10), _obj("dog", 13, 10)]
    assert _scores(far, far)["b_recall"] is None
    summary = scene_metrics.summarize([_scores(far, far), _scores(truth, truth)], ("size",))
    assert summary["num_bigram_scenes"] == 1.0 and summary["b_recall"] == 1.0
    assert summary["size_accuracy"] == 1.0 and summary["size_count"] == 5.0


# -- the model ----------------------------------------------------------------------------------
B, T, L = 2, scenes.MAX_OBJECTS + 1, 12


def _model(**kw):
    return Text2Scene(
        vocab_size=len(scenes.VOCAB),
        num_objects=len(scenes.OBJECTS),
        attributes=tuple(scenes.ATTRIBUTES.values()),
        image_size=32,
        width=8,
        hidden=8,
        embed_dim=8,
        max_words=L,
        **kw,
    )


def _inputs(seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    words = jax.random.randint(k[0], (B, L), 1, len(scenes.VOCAB)).at[:, -3:].set(0)
    canvases = jax.random.randint(k[1], (B, T, 32, 32, 3), 0, 256).astype(jnp.uint8)
    objects = jax.random.randint(k[2], (B, T), 0, len(scenes.OBJECTS) + 1)
    return words, canvases, objects, objects


@pytest.mark.parametrize("text_encoder", ["gru", "transformer"])
def test_model_output_shapes(text_encoder):
    model = _model(text_encoder=text_encoder)
    inputs = _inputs()
    params = model.init(jax.random.key(1), *inputs)["params"]
    out = jax.jit(model.apply)({"params": params}, *inputs)
    g = scenes.GRID * scenes.GRID
    chex.assert_shape(out["what"], (B, T, len(scenes.OBJECTS) + 1))
    chex.assert_shape(out["location"], (B, T, g))
    chex.assert_shape(out["attributes"], [(B, T, g, k) for k in scenes.ATTRIBUTES.values()])
    chex.assert_shape([out["what_attention"], out["where_attention"]], (B, T, L))
    chex.assert_type(out["what"], jnp.float32)
    # Attention is a distribution over the real words alone.
    np.testing.assert_allclose(out["what_attention"].sum(-1), 1.0, rtol=1e-5)
    assert float(jnp.abs(out["what_attention"][..., -3:]).max()) == 0.0


def test_ablations_without_attention_average_the_words_and_the_canvas():
    model = _model(what_attention=False, where_attention=False, spatial_attention=False)
    inputs = _inputs()
    params = model.init(jax.random.key(1), *inputs)["params"]
    assert "what_text_attn" not in params and "spatial_attn" not in params
    out = model.apply({"params": params}, *inputs)
    words = np.asarray(inputs[0] > 0, np.float32)
    uniform = words / words.sum(-1, keepdims=True)
    for key in ("what_attention", "where_attention"):
        np.testing.assert_allclose(
            out[key], np.broadcast_to(uniform[:, None], (B, T, L)), rtol=1e-6
        )


def test_blind_model_ignores_the_canvas():
    words, canvases, prev, objs = _inputs()
    for canvas_on, expect_change in ((True, True), (False, False)):
        model = _model(canvas=canvas_on)
        params = model.init(jax.random.key(1), words, canvases, prev, objs)["params"]
        a = model.apply({"params": params}, words, canvases, prev, objs)["what"]
        b = model.apply({"params": params}, words, 255 - canvases, prev, objs)["what"]
        assert bool(jnp.abs(a - b).max() > 1e-6) == expect_change


@pytest.mark.parametrize("dilations, reach", [((1, 1), 2), ((1, 2, 4, 8), 15)])
def test_where_head_reaches_as_far_as_its_dilations(dilations, reach):
    """A change of the canvas state at one corner cell moves the location logits exactly at the
    cells within the head's reach: 2 cells for two 3x3 layers, the whole grid for (1, 2, 4, 8)."""
    model = _model(where_dilations=dilations)
    words, canvases, prev, objs = _inputs()
    params = model.init(jax.random.key(1), words, canvases, prev, objs)["params"]
    assert len([k for k in params if k.startswith("where_convs_")]) == len(dilations)
    text, mask = model.apply({"params": params}, words, method=model.encode_text)
    state = jax.random.normal(jax.random.key(2), (B, 16, 16, 8))
    ctx = jnp.zeros((B, 16))

    def where(s):
        loc, _, _ = model.apply(
            {"params": params}, s, objs[:, 0], ctx, text, mask, method=model.where
        )
        return np.asarray(loc).reshape(B, 16, 16)

    moved = np.abs(where(state.at[:, 0, 0].add(5.0)) - where(state)).max(0) > 0
    near = (np.arange(16)[:, None] <= reach) & (np.arange(16)[None] <= reach)
    np.testing.assert_array_equal(moved, near)


def test_where_dilations_are_checked():
    words, canvases, prev, objs = _inputs()
    for bad in ((1,), (2, 1)):
        with pytest.raises(ValueError, match="where_dilations needs"):
            _model(where_dilations=bad).init(jax.random.key(0), words, canvases, prev, objs)


def test_attention_loss_against_a_direct_sum():
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(5), size=(3, 4))  # [B, T, L]
    steps = rng.random((3, 4)) < 0.7
    words = rng.random((3, 5)) < 0.8
    expected = np.mean(
        [
            sum(
                (sum(w[b, t, i] for t in range(4) if steps[b, t]) - 1.0) ** 2
                for i in range(5)
                if words[b, i]
            )
            for b in range(3)
        ]
    )
    got = text2scene.attention_loss(jnp.asarray(w), jnp.asarray(steps), jnp.asarray(words, float))
    assert float(got) == pytest.approx(expected, rel=1e-5)


@pytest.fixture(scope="module")
def smoke_pipeline():
    config = experiment_config("text2scene", "smoke")
    pipe = build_pipeline(config)
    source = scenes.ScenesSource(
        "train", config.data.image_size, max_text_len=config.data.max_text_len
    )
    items = [source[i] for i in range(4)]
    batch = {k: jnp.asarray(np.stack([it[k] for it in items])) for k in items[0]}
    state = pipe.init(jax.random.key(0), batch)
    # A few updates, so that the parameters are not at their initialisation.
    step = jax.jit(pipe.train_step)
    for i in range(3):
        state, _ = step(state, batch, jax.random.key(i))
    return pipe, state, batch, source


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_losses_against_a_direct_computation(smoke_pipeline):
    pipe, state, batch, source = smoke_pipeline
    params = state.params["text2scene"]
    total, metrics = pipe.losses(params, batch)
    # The network's outputs, with canvases rendered by numpy from the truths.
    canvases = np.zeros((4, T, 32, 32, 3), np.uint8)
    for b in range(4):
        objects = source.truth(b)["objects"]
        for t in range(T):
            canvases[b, t] = scenes.render_scene(objects[:t], 32)
    objs = np.asarray(batch["objects"])
    prev = np.concatenate([np.full((4, 1), len(scenes.OBJECTS) + 1), objs[:, :-1]], 1)
    out = pipe.model.apply({"params": params}, batch["tokens"], canvases, prev, objs)
    steps = np.asarray(batch["steps"])
    locs, attrs = np.asarray(batch["locations"]), np.asarray(batch["attributes"])
    what_terms, where_terms, attr_terms = [], [], {k: [] for k in scenes.ATTRIBUTES}
    for b in range(4):
        for t in range(T):
            if not steps[b, t]:
                continue
            what_terms.append(-_log_softmax(out["what"][b, t])[objs[b, t]])
            if objs[b, t] == scenes.END:
                continue
            where_terms.append(-_log_softmax(out["location"][b, t])[locs[b, t]])
            name = scenes.OBJECTS[objs[b, t]]
            for k, attr in enumerate(scenes.ATTRIBUTES):
                if scenes.applies(name, attr):
                    logp = _log_softmax(out["attributes"][k][b, t, locs[b, t]])
                    attr_terms[attr].append(-logp[attrs[b, t, k]])
    lc = pipe.config.loss
    words = (np.asarray(batch["tokens"]) > 0).astype(float)
    placed = steps & (objs < scenes.END)
    attn = float(
        text2scene.attention_loss(out["what_attention"], steps, words)
        + text2scene.attention_loss(out["where_attention"], placed, words)
    )
    expected = (
        lc.object_weight * np.mean(what_terms)
        + lc.location_weight * np.mean(where_terms)
        + lc.attribute_weight * sum(np.mean(v) for v in attr_terms.values() if v)
        + lc.attention_weight * attn
    )
    assert float(total) == pytest.approx(expected, rel=1e-4)
    assert float(metrics["object_loss"]) == pytest.approx(np.mean(what_terms), rel=1e-4)


def test_free_decoding_agrees_with_teacher_forcing_on_the_first_step(smoke_pipeline):
    pipe, state, batch, _ = smoke_pipeline
    params = state.ema_params["text2scene"]
    objs, attrs, locs, canvases = pipe._decode(
        params, batch["tokens"], jax.random.key(0), "greedy", 1.0
    )
    first = jnp.stack([objs[:, 0]] * T, 1)
    prev = jnp.full((4, T), len(scenes.OBJECTS) + 1)
    start = jnp.broadcast_to(canvases[:, :1], (4, T, *canvases.shape[2:]))
    out = pipe.model.apply({"params": params}, batch["tokens"], start, prev, first)
    np.testing.assert_array_equal(objs[:, 0], out["what"][:, 0].argmax(-1))
    placed = objs[:, 0] < scenes.END
    np.testing.assert_array_equal(
        np.where(placed, locs[:, 0], 0), np.where(placed, out["location"][:, 0].argmax(-1), 0)
    )
    # The canvas after a step shows what the step decided.
    for b in range(4):
        drawn = scenes.objects_from_arrays(objs[b], attrs[b], locs[b])
        np.testing.assert_array_equal(canvases[b, -1], scenes.render_scene(drawn, 32))


def test_decoding_is_greedy_by_default_and_sampling_varies(smoke_pipeline):
    pipe, state, _, source = smoke_pipeline
    prompts = [source.truth(i)["caption"] for i in range(4)]
    a = pipe.generate_scenes(state, prompts, jax.random.key(0))
    assert a == pipe.generate_scenes(state, prompts, jax.random.key(1))
    sampled = [
        pipe.generate_scenes(state, prompts, jax.random.key(k), decoding="sample", temperature=3.0)
        for k in range(3)
    ]
    assert sampled[0] != sampled[1] or sampled[1] != sampled[2]
    images = pipe.generate(state, prompts, jax.random.key(0))
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    steps = pipe.composition_steps(state, prompts[:1], jax.random.key(0))
    assert steps.shape == (1, T + 1, 32, 32, 3)
    with pytest.raises(ValueError, match="decoding must be"):
        pipe.generate(state, prompts, jax.random.key(0), decoding="beam_search_typo")
    with pytest.raises(PromptError, match="unknown word"):
        pipe.generate(state, ["a dragon is on the left ."], jax.random.key(0))


def test_beam_search_of_width_one_is_greedy_and_wider_beams_draw_what_they_decide(
    smoke_pipeline,
):
    pipe, state, _, source = smoke_pipeline
    prompts = [source.truth(i)["caption"] for i in range(4)]
    key = jax.random.key(0)
    greedy = pipe.compose(state, prompts, key)
    beam1 = pipe.compose(state, prompts, key, decoding="beam", beam_size=1)
    for a, b in zip(greedy, beam1, strict=True):
        np.testing.assert_array_equal(a, b)
    objs, attrs, locs, canvases = pipe.compose(state, prompts, key, decoding="beam", beam_size=3)
    for b in range(4):
        drawn = scenes.objects_from_arrays(objs[b], attrs[b], locs[b])
        for t in range(T + 1):
            np.testing.assert_array_equal(canvases[b, t], scenes.render_scene(drawn[:t], 32))
    with pytest.raises(ValueError, match="beam_size must be at least 1"):
        pipe.compose(state, prompts, key, decoding="beam", beam_size=0)


def test_beam_search_ranks_per_decision_step_not_by_the_sum():
    """A toy model where the summed log-probability prefers the empty scene: the first step
    gives object 0 a probability of 0.7 and END 0.3, placing the object costs log 0.2, and after
    it END is all but sure. Summed, the empty scene wins (log 0.3 against log 0.7 + log 0.2);
    per decision step the object wins, as greedy decoding chooses it."""
    pipe = build_pipeline(experiment_config("text2scene", "smoke"))
    o = pipe.end + 1
    first = jnp.full((o,), 1e-6).at[0].set(0.7).at[pipe.end].set(0.3)
    after = jnp.full((o,), 1e-6).at[pipe.end].set(1.0)
    place_lp = math.log(0.2)
    assert math.log(0.3) > math.log(0.7) + place_lp + math.log(1 - 1e-6 * (o - 1))

    def observe(params, state, canvas, previous, text, mask):
        probs = jnp.where((previous == pipe.start_id)[:, None], first, after)
        return state, jnp.log(probs), jnp.zeros((previous.shape[0], 1))

    def place(params, state, obj, context, text, mask, pick):
        n = obj.shape[0]
        loc = jnp.full((n,), 8 * 16 + 8, jnp.int32)
        return loc, jnp.zeros((n, len(pipe.attribute_names)), jnp.int32), jnp.full((n,), place_lp)

    pipe._observe, pipe._place = observe, place
    words = jnp.asarray(pipe.tokenize(["a sun is on the left side ."] * 2))
    params = pipe.model.init(jax.random.key(0), words, method=pipe.model.encode_text)["params"]
    greedy = pipe._decode(params, words, jax.random.key(0), "greedy", 1.0)
    for width in (1, 2, 3):
        beam = pipe._beam_decode(params, words, width)
        np.testing.assert_array_equal(beam[0], greedy[0])
        np.testing.assert_array_equal(beam[0][:, :2], [[0, pipe.end]] * 2)


def test_pipeline_rejects_other_datasets():
    config = experiment_config("text2scene", "smoke")
    config.data.name = "digits"
    with pytest.raises(ValueError, match="'scenes' dataset or layouts of 'shapes'"):
        build_pipeline(config)


# -- the CLI ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    return shared_config_run(tmp_path_factory, SMOKE)


def test_cli_trains_resumes_samples_evaluates_and_loads(smoke_run, tmp_path):
    assert smoke_run.returncode == 0, smoke_run.stderr[-3000:]
    results = json.loads((smoke_run.workdir / "eval.json").read_text())
    assert results["final"] and results["step"] == 20
    for key in ("test/u_precision", "test/b_recall_lo", "heldout/u_recall", "test/size_chance"):
        assert key in results, key
    assert list((smoke_run.workdir / "samples").glob("*.png"))
    workdir = copy_workdir(smoke_run.workdir, tmp_path / "t2s")
    common = [SMOKE, f"--workdir={workdir}"]
    r = run_cli(*common)  # resumes at the end, trains nothing more
    assert r.returncode == 0 and "Resum" in r.stderr, r.stderr[-3000:]
    r = run_cli(*common, "--mode=sample", "--prompt=a big tree is on the left .", "--num_samples=2")
    assert r.returncode == 0 and "Wrote 2 samples" in r.stdout, r.stderr[-3000:]
    r = run_cli(*common, "--mode=eval")
    assert r.returncode == 0 and "test/u_precision" in r.stdout, r.stderr[-3000:]
    model = jaxgen.load(workdir)
    scene = model.pipeline.generate_scenes(
        model.state, ["a dog is on the right facing left ."], jax.random.key(0)
    )
    assert isinstance(scene[0], list)
    json.dumps(scene)
