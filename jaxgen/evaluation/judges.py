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

    Returns:
      ``{"<split>/<metric>": value, "<split>/frechet": value}``.
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
    return results
