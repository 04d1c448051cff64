"""Dataset judges behind one interface, and the generic text-to-image evaluator.

A judge knows the ground truth of its dataset's captions: it supplies evaluation prompts (with
their truths and the real images they came from), scores generated images against the truths
(per item, so that every accuracy carries its 95% interval), and embeds images in a feature
space for a Frechet distance. Every text-to-image pipeline evaluates through
``evaluate_generator``.
"""

from collections.abc import Callable

import numpy as np
from absl import logging

from jaxgen.evaluation import intervals
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

    def outcomes(self, images: np.ndarray, truths: list) -> dict[str, np.ndarray]:
        """Per named accuracy, the 0/1 outcome of each item it counts; none without truth."""
        del images, truths
        return {}

    def score(self, images: np.ndarray, truths: list) -> dict[str, float]:
        """Each accuracy of ``outcomes`` with its 95% interval, and ``num_images``."""
        found = self.outcomes(images, truths)
        if not found:
            return {}
        return {**intervals.summarize(found), "num_images": float(len(images))}

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

    def read(self, images: np.ndarray, prompt: str) -> list[dict[str, bool]] | None:
        """Per image, whether it shows what ``prompt`` asks for, attribute by attribute
        (``{"colour": True, "shape": False, ...}``); None when the prompt is outside the
        dataset's grammar, so that there is nothing to judge against."""
        del images, prompt
        return None


class ShapesJudge(Judge):
    """Colour / shape / size / count / relation accuracy of generated shapes scenes."""

    has_truth = True

    def outcomes(self, images, truths):
        from jaxgen.evaluation import shapes_judge

        return shapes_judge.judge_outcomes(images, truths)

    def score(self, images, truths):
        found = self.outcomes(images, truths)
        return {
            **intervals.summarize(found),
            "num_images": float(len(images)),
            "num_relations": float(len(found["relation"])),
        }

    def features(self, images):
        from jaxgen.evaluation import shapes_judge

        return shapes_judge.features(images)

    def content_key(self, truth):
        from jaxgen.data import shapes

        return shapes.content_key(truth)

    def attribute_variants(self, truth):
        from jaxgen.data import shapes

        return shapes.attribute_variants(truth)

    def read(self, images, prompt):
        from jaxgen.data import shapes
        from jaxgen.evaluation import shapes_judge

        truth = shapes.parse_caption(prompt)
        if truth is None:
            return None
        # Sizes are read for the objects the prompt gives one ("a red circle" asks for none).
        sized = [i for i, o in enumerate(truth["objects"]) if o["size"] is not None]
        readings = []
        for detected in shapes_judge.detect_objects(np.asarray(images)):
            found = shapes_judge.judge_one(detected, truth)
            reading = {"colour": all(found["colour"]), "shape": all(found["shape"])}
            if sized:
                reading["size"] = all(found["size"][i] for i in sized)
            reading["count"] = bool(found["count"])
            if found["relation"] is not None:
                reading["relation"] = bool(found["relation"])
            readings.append(reading)
        return readings


class DigitsClassifierJudge(Judge):
    """Accuracy of a classifier trained on the real digits."""

    has_truth = True

    def __init__(self, data_config):
        super().__init__(data_config)
        from jaxgen.evaluation.digits_judge import DigitsJudge as Classifier

        self.classifier = Classifier()

    def outcomes(self, images, truths):
        labels = np.asarray([t["label"] for t in truths])
        predicted = self.classifier.predict(images)
        if len(predicted) != len(labels):
            raise ValueError(f"{len(predicted)} images but {len(labels)} truths")
        return {"accuracy": predicted == labels}

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

    def read(self, images, prompt):
        from jaxgen.data.digits import parse_caption

        label = parse_caption(prompt)
        if label is None:
            return None
        return [{"digit": bool(p == label)} for p in self.classifier.predict(np.asarray(images))]


# Layouts of shapes (Text2Scene) are shapes scenes: the same captions, truths and judge.
JUDGES = {"shapes": ShapesJudge, "shapes_layouts": ShapesJudge, "digits": DigitsClassifierJudge}


def build_judge(data_config) -> Judge:
    """The judge for ``data_config.name`` (a caption-only judge for datasets without truth)."""
    return JUDGES.get(data_config.name, Judge)(data_config)


def evaluate_generator(
    generate: Callable,
    judge: Judge,
    state,
    rng,
    *,
    splits: tuple[str, ...],
    num_samples: int,
    seed: int = 0,
    generate_options: dict | None = None,
    embedder=None,
    rerank: Callable | None = None,
    candidates: int = 1,
    num_distractors: int = 99,
) -> dict[str, float]:
    """Generates images for each split's prompts and judges them, every score with its 95%
    interval (``<key>_lo``, ``<key>_hi``; ``jaxgen.evaluation.intervals``).

    Args:
      generate: ``generate(state, prompts, rng) -> uint8 [N, H, W, 3]``, one sample per prompt.
      judge: the dataset's judge.
      state: the pipeline state to evaluate.
      rng: PRNG key for sampling.
      splits: evaluation splits (e.g. "test" and "heldout" for shapes).
      num_samples: prompts per split.
      seed: which prompts are drawn (fixed so evaluations over training are comparable).
      generate_options: keyword arguments for ``generate`` (e.g. fewer sampler steps).
      embedder: the evaluation CLIP (``Pipeline.load_embedder``) for CLIP score and
        R-precision; None skips them. It must not be the CLIP that ``rerank`` selects with.
      rerank: ``rerank(state, prompts, rng, candidates=k) -> images``, the best of k samples
        per prompt; with ``candidates > 1`` its samples are judged too, under
        ``<split>/best_of_<k>/<metric>``.
      candidates: k for ``rerank``; 1: single samples only.
      num_distractors: captions of other contents each image's caption is ranked against.

    Returns:
      ``{"<split>/<metric>": value, "<split>/frechet": value, ...}`` with intervals, plus
      ``"<split>/clip_score"`` and ``"<split>/r_precision"`` with an embedder.
    """
    import jax

    options = generate_options or {}
    results = {}
    for i, split in enumerate(splits):
        captions, truths, real = judge.prompts(split, num_samples, seed=seed)
        real_feats = judge.features(real)
        pool = None
        if embedder is not None:
            pool = judge.prompts(split, max(4 * num_samples, 256), seed=seed + 1)[:2]
        key = jax.random.fold_in(rng, i)
        samplers = [("", generate, {})]
        if candidates > 1:
            if rerank is None:
                raise ValueError("candidates > 1 needs a rerank function.")
            samplers.append((f"best_of_{candidates}/", rerank, {"candidates": candidates}))
        for tag, sample, extra in samplers:
            # Sampling hundreds of prompts takes minutes on a CPU: say what is being judged.
            logging.info(
                "Judging %d %s prompts%s ...", num_samples, split, f" ({tag[:-1]})" * bool(tag)
            )
            images = np.asarray(sample(state, captions, key, **extra, **options))
            found = judge.score(images, truths)
            fake_feats = judge.features(images)
            if fake_feats is not None:
                found.update(
                    intervals.bootstrap(
                        "frechet", frechet_distance, fake_feats, real_feats, floor=0.0
                    )
                )
            if embedder is not None:
                from jaxgen.evaluation import clip_metrics

                found.update(
                    clip_metrics.generated_image_metrics(
                        embedder,
                        images,
                        captions,
                        [judge.content_key(t) for t in truths],
                        pool[0],
                        [judge.content_key(t) for t in pool[1]],
                        num_distractors=num_distractors,
                        seed=seed,
                    )
                )
            results.update({f"{split}/{tag}{k}": float(v) for k, v in found.items()})
    return results
