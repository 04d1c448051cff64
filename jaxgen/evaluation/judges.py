"""Dataset judges behind one interface, and the generic text-to-image evaluator.

A judge knows the ground truth of its dataset's captions: it supplies evaluation prompts (with
their truths and the real images they came from), scores generated images against the truths,
and embeds images in a feature space for a Frechet distance. Every text-to-image pipeline
evaluates through ``evaluate_generator``.
"""

from collections.abc import Callable

import numpy as np

from jaxgen.evaluation.frechet import frechet_distance


class Judge:
    """Base: prompts from a dataset's captions, no scoring (datasets without ground truth)."""

    #: Whether ``score``/``features`` measure anything (False: evaluation is skipped).
    has_truth = False

    def __init__(self, data_config):
        self.data_config = data_config

    def source(self, split: str):
        from jaxgen import data as data_lib

        return data_lib.build_source(self.data_config, split)

    def prompts(self, split: str, n: int, seed: int = 0):
        """Returns ``(captions, truths, real_images uint8 [n, H, W, 3])`` drawn from ``split``."""
        src = self.source(split)
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(src), size=n, replace=n > len(src))
        examples = [src.example(int(i)) for i in idx]
        images = np.stack(
            [
                e["image"] if "image" in e else src[int(i)]["image"]
                for i, e in zip(idx, examples, strict=True)
            ]
        )
        return [e["caption"] for e in examples], examples, images

    def score(self, images: np.ndarray, truths: list) -> dict[str, float]:
        del images, truths
        return {}

    def content_key(self, truth: dict):
        """What the caption pins down (hashable); examples with equal keys match each other's
        captions. Without ground truth, the caption itself."""
        return truth["caption"]

    def attribute_variants(self, truth: dict) -> dict[str, list[str]]:
        """Per attribute, captions differing from the truth in that attribute alone, the true
        one first (for zero-shot classification); none without ground truth."""
        del truth
        return {}

    def features(self, images: np.ndarray) -> np.ndarray | None:
        del images
        return None


class ShapesJudge(Judge):
    """Colour / shape / size / count / relation accuracy of generated shapes scenes."""

    has_truth = True

    def score(self, images, truths):
        from jaxgen.evaluation import shapes_judge

        return shapes_judge.judge_batch(images, truths)

    def features(self, images):
        from jaxgen.evaluation import shapes_judge

        return shapes_judge.features(images)

    def content_key(self, truth):
        from jaxgen.data import shapes

        return shapes.content_key(truth)

    def attribute_variants(self, truth):
        from jaxgen.data import shapes

        return shapes.attribute_variants(truth)


class DigitsClassifierJudge(Judge):
    """Accuracy of a classifier trained on the real digits."""

    has_truth = True

    def __init__(self, data_config):
        super().__init__(data_config)
        from jaxgen.evaluation.digits_judge import DigitsJudge as Classifier

        self.classifier = Classifier()

    def score(self, images, truths):
        labels = np.asarray([t["label"] for t in truths])
        return {"accuracy": float(self.classifier.accuracy(images, labels))}

    def features(self, images):
        return self.classifier.features(images)

    def content_key(self, truth):
        return int(truth["label"])

    def attribute_variants(self, truth):
        from jaxgen.data.digits import caption_for

        label = int(truth["label"])
        return {
            "digit": [caption_for(d, 0) for d in [label, *(d for d in range(10) if d != label)]]
        }


JUDGES = {"shapes": ShapesJudge, "digits": DigitsClassifierJudge}


def build_judge(data_config) -> Judge:
    """The judge for ``data_config.name`` (a caption-only judge for datasets without truth)."""
    return JUDGES.get(data_config.name, Judge)(data_config)


def evaluate_generator(
    generate: Callable,
    judge: Judge,
    state,
    rng,
    *,
    splits: tuple[str, ...] = ("test",),
    num_samples: int = 256,
    seed: int = 0,
    generate_options: dict | None = None,
    embedder=None,
    num_distractors: int = 99,
) -> dict[str, float]:
    """Generates images for each split's prompts and judges them.

    Args:
      generate: ``generate(state, prompts, rng) -> uint8 [N, H, W, 3]``.
      judge: the dataset's judge.
      state: the pipeline state to evaluate.
      rng: PRNG key for sampling.
      splits: evaluation splits (e.g. "test" and "heldout" for shapes).
      num_samples: prompts per split.
      seed: which prompts are drawn (fixed so evaluations over training are comparable).
      generate_options: keyword arguments for ``generate`` (e.g. fewer sampler steps).
      embedder: a trained CLIP (``Pipeline.load_embedder``) for CLIP score and R-precision;
        None skips them.
      num_distractors: captions of other contents each image's caption is ranked against.

    Returns:
      ``{"<split>/<metric>": value, "<split>/frechet": value}``, plus ``"<split>/clip_score"``
      and ``"<split>/r_precision"`` with an embedder.
    """
    import jax

    results = {}
    for i, split in enumerate(splits):
        captions, truths, real = judge.prompts(split, num_samples, seed=seed)
        images = np.asarray(
            generate(state, captions, jax.random.fold_in(rng, i), **(generate_options or {}))
        )
        for k, v in judge.score(images, truths).items():
            results[f"{split}/{k}"] = float(v)
        fake_feats = judge.features(images)
        if fake_feats is not None:
            results[f"{split}/frechet"] = float(frechet_distance(fake_feats, judge.features(real)))
        if embedder is not None:
            from jaxgen.evaluation import clip_metrics

            pool, pool_truths, _ = judge.prompts(split, max(4 * num_samples, 256), seed=seed + 1)
            found = clip_metrics.generated_image_metrics(
                embedder,
                images,
                captions,
                [judge.content_key(t) for t in truths],
                pool,
                [judge.content_key(t) for t in pool_truths],
                num_distractors=num_distractors,
                seed=seed,
            )
            results.update({f"{split}/{k}": v for k, v in found.items()})
    return results
