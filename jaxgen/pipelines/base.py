"""The pipeline contract every model family implements.

The loop, the CLI, the notebooks and the tests only use this surface, so a new family is a new
module and a line in the registry, never a change to the loop.
"""

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

# An evaluator maps (state, rng) to named scalar results. ``name`` prefixes its keys.
Evaluator = Callable[[Any, jax.Array], dict[str, float]]


@dataclasses.dataclass(frozen=True)
class EvalPlan:
    """What one evaluation judges. The final one (end of training, ``--mode=eval``) reads the
    splits a run reports (``config.eval.splits``, e.g. test and heldout) on
    ``eval.num_samples`` prompts each; the ones during training, which runs and sweeps are
    steered by, read the validation splits (``eval.val_splits``) on ``eval.val_num_samples``.
    """

    splits: tuple[str, ...]
    num_samples: int
    final: bool

    @classmethod
    def from_config(cls, eval_config, final: bool = True) -> "EvalPlan":
        if final:
            return cls(tuple(eval_config.splits), int(eval_config.num_samples), True)
        num = int(eval_config.get("val_num_samples", 0) or eval_config.num_samples)
        return cls(tuple(eval_config.get("val_splits", ("val",))), num, False)


@dataclasses.dataclass(frozen=True)
class SampleOption:
    """A keyword of a pipeline's ``generate`` that a user may turn (the demo draws one control
    per option). Its default is ``config.sample[name]``."""

    name: str
    kind: str  # "int", "float" or "choice"
    low: float = 0.0
    high: float = 0.0
    choices: tuple[str, ...] = ()
    help: str = ""

    def default(self, config):
        return config.sample.get(self.name)

    def check(self, value):
        """``value`` as this option's type; ValueError naming the option and its range."""
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{self.name} must be one of {self.choices}, got {value!r}.")
            return value
        cast = int if self.kind == "int" else float
        try:
            number = cast(value)
        except (TypeError, ValueError):
            raise ValueError(f"{self.name} must be a number, got {value!r}.") from None
        if not self.low <= number <= self.high or (self.kind == "int" and number != value):
            raise ValueError(
                f"{self.name} must be {'an integer' if self.kind == 'int' else 'a number'} "
                f"in [{self.low:g}, {self.high:g}], got {value!r}."
            )
        return number


def check_independent_scorer(config) -> None:
    """Raises ValueError when the evaluation CLIP (``eval.clip_workdir``) is the CLIP that
    re-ranks the samples (``sample.rerank_clip`` with ``sample.rerank`` above 1): the scorer
    would pick the samples it scores."""
    sample, evaluation = config.get("sample") or {}, config.get("eval") or {}
    judge_clip = str(evaluation.get("clip_workdir", "") or "")
    rank_clip = str(sample.get("rerank_clip", "") or "")
    if int(sample.get("rerank", 1)) > 1 and judge_clip and judge_clip == rank_clip:
        raise ValueError(
            f"eval.clip_workdir and sample.rerank_clip are the same CLIP ({judge_clip}): the "
            "evaluation would score samples its own scorer picked. Give the evaluation another "
            "CLIP run (e.g. shared:clip:eval)."
        )


class Pipeline(abc.ABC):
    """One model family: its state, its pure train step, its sampler and its judges.

    Subclasses are constructed from the whole experiment config. ``train_step`` must be a pure
    function of its arguments: the loop jits it with the state donated and the batch sharded over
    the mesh's ``data`` axis.
    """

    #: Whether the family trains on a dataset (style transfer optimises an image instead).
    needs_data: bool = True
    #: Whether ``generate``'s prompts are captions (style transfer's are images to stylise).
    prompts_are_text: bool = True
    #: The sampler's knobs a user may turn, beyond the seed and the number of images.
    sample_options: tuple[SampleOption, ...] = ()

    def __init__(self, config, load_run: Callable[[str], Any] | None = None):
        self.config = config
        self._load_run = load_run
        check_independent_scorer(config)

    def load_run(self, workdir: str):
        """Another trained run this one builds on (a CLIP, a tokenizer): an object with its
        ``config``, ``pipeline`` and ``state``. Pipelines read no workdir themselves: the
        training layer passes the loader when it builds them
        (``jaxgen.training.workdir.build_pipeline``)."""
        if self._load_run is None:
            raise ValueError(
                f"This pipeline needs the trained run in {workdir} but was built without a "
                "loader: build it with jaxgen.training.workdir.build_pipeline(config)."
            )
        return self._load_run(str(workdir))

    @abc.abstractmethod
    def init(self, rng: jax.Array, example_batch: dict[str, np.ndarray] | None) -> Any:
        """Returns the initial state pytree (params, optimiser states, EMA, step)."""

    @abc.abstractmethod
    def train_step(self, state: Any, batch: dict[str, jax.Array], rng: jax.Array):
        """One update. Returns ``(new_state, metrics)``; metrics is a dict of scalars."""

    @abc.abstractmethod
    def generate(self, state: Any, prompts: Sequence[str], rng: jax.Array, **options) -> np.ndarray:
        """Samples one image per prompt. Returns uint8 ``[len(prompts), H, W, 3]``."""

    def rerank(
        self,
        state: Any,
        prompts: Sequence[str],
        rng: jax.Array,
        *,
        candidates: int | None = None,
        **options,
    ) -> np.ndarray:
        """``generate``, re-ranked by CLIP as DALL-E re-ranks its samples: draws ``candidates``
        images per prompt (default ``config.sample.rerank``; 1 = ``generate`` alone) and keeps
        the one whose embedding under the CLIP run at ``config.sample.rerank_clip`` is nearest
        the prompt's. Costs ``candidates`` times the sampling; ``options`` go to ``generate``.
        Returns uint8 ``[len(prompts), H, W, 3]``."""
        sample = self.config.get("sample", {})
        k = int(sample.get("rerank", 1) if candidates is None else candidates)
        if k < 1:
            raise ValueError(f"Re-ranking needs at least 1 candidate per prompt, got {k}.")
        if k == 1:
            return self.generate(state, prompts, rng, **options)
        from jaxgen.evaluation import clip_metrics

        path = str(sample.get("rerank_clip", "") or "")
        if not path:
            raise ValueError(
                f"Re-ranking {k} candidates per prompt needs a trained CLIP: set "
                "--config.sample.rerank_clip to a CLIP workdir."
            )
        embedder = self.load_embedder(path)
        prompts = list(prompts)
        n = len(prompts)
        # Candidate j of prompt i sits at j * n + i: one call, one compiled batch shape.
        images = np.asarray(self.generate(state, prompts * k, rng, **options))
        img = np.asarray(embedder.embed_images(images)).reshape(k, n, -1)
        best = clip_metrics.best_candidates(img, np.asarray(embedder.embed_texts(prompts)))
        return images[best * n + np.arange(n)]

    def warm_start(self, state: Any) -> Any:
        """Called once on a fresh run (not on resume) to load pretrained weights into the new
        state, e.g. a CLIP text encoder; returns the state unchanged by default."""
        return state

    def sample_images(self, state: Any, prompts: Sequence[str], rng: jax.Array) -> np.ndarray:
        """The images of the training loop's sample grids: ``generate``'s by default (the
        autoencoders show reconstructions next to their inputs instead)."""
        return self.generate(state, prompts, rng)

    def outputs(self, state: Any) -> dict[str, np.ndarray]:
        """Named results a run writes at its end beside its sample grids, as
        ``<workdir>/<name>.png``: uint8 images ``[H, W, 3]``, or 1-D arrays drawn as curves
        (style transfer's result and loss curve); none by default."""
        del state
        return {}

    def evaluators(self, plan: EvalPlan) -> list[Evaluator]:
        """Judges run during training (on ``plan``'s validation splits) and at its end or by
        ``--mode=eval`` (on the splits a run reports); empty by default."""
        del plan
        return []

    def default_prompts(self, n: int) -> list[str]:
        """Prompts used for sample grids when the user gives none: captions of the validation
        split (what a run shows while it trains is never the split it reports)."""
        return self.judge.prompts("val", n, seed=1)[0]

    # -- shared by the text-to-image families -------------------------------------------------
    @property
    def judge(self):
        """The judge of ``config.data`` (prompts with ground truth, scores), built once."""
        if getattr(self, "_judge", None) is None:
            from jaxgen.evaluation import judges

            self._judge = judges.build_judge(self.config.data)
        return self._judge

    @property
    def clip_embedder(self):
        """The evaluation CLIP at ``config.eval.clip_workdir`` (loaded once per path), or None."""
        path = str(self.config.get("eval", {}).get("clip_workdir", "") or "")
        return self.load_embedder(path) if path else None

    def sampled_evaluator(self, plan: EvalPlan, **generate_options) -> Evaluator:
        """``judges.evaluate_generator`` over ``generate``, and on the final plan also over
        ``rerank`` with ``config.sample.rerank`` candidates when that is above 1. CLIP score
        and R-precision come from the evaluation CLIP (``eval.clip_workdir``), which must not
        be the CLIP that picks the re-ranked samples."""
        import functools

        from jaxgen.evaluation import judges

        candidates = int(self.config.sample.get("rerank", 1)) if plan.final else 1
        return functools.partial(
            judges.evaluate_generator,
            self.generate,
            self.judge,
            splits=plan.splits,
            num_samples=plan.num_samples,
            generate_options=generate_options,
            embedder=self.clip_embedder,
            rerank=self.rerank,
            candidates=candidates,
        )

    def load_embedder(self, workdir: str):
        """The trained run at ``workdir`` as an embedder (``embed_texts``, ``embed_images``,
        ``jaxgen.evaluation.clip_metrics``); ValueError when it cannot embed (not a CLIP)."""
        run = self.load_run(workdir)
        if not hasattr(run.pipeline, "embed_texts"):
            raise ValueError(
                f"{workdir} holds a {run.config.pipeline!r} run, not a CLIP run: it cannot embed "
                "texts and images."
            )
        return run

    def check_images(self, images) -> np.ndarray:
        """``images`` as a numpy array; ValueError unless uint8 ``[N, S, S, 3]`` with S =
        ``config.data.image_size``."""
        images = np.asarray(images)
        size = int(self.config.data.image_size)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ValueError(
                f"images must be uint8 [N, {size}, {size}, 3], got {images.dtype} "
                f"{list(images.shape)}."
            )
        return images

    def tokenize(self, prompts: Sequence[str] | str) -> np.ndarray:
        """Validates and byte-encodes prompts (``config.data.max_text_len``); raises
        ``PromptError`` with a clear message for an empty, too long or non-text prompt."""
        from jaxgen.data import tokenizer

        if isinstance(prompts, str):
            prompts = [prompts]
        max_len = int(self.config.data.max_text_len)
        for p in prompts:
            tokenizer.validate_prompt(p, max_len)
        return tokenizer.encode_batch(list(prompts), max_len)
