"""Metrics over joint text-image embeddings: retrieval recall, zero-shot choice, CLIP score,
R-precision.

All functions take unit-norm embeddings as numpy arrays, so they are independent of the model
that produced them. An embedder is any object with ``embed_texts(list[str]) -> [N, D]`` and
``embed_images(uint8 [N, H, W, 3]) -> [N, D]``; a trained CLIP workdir, loaded with
``jaxgen.load``, is one.

Content, not identity: many ``shapes`` examples show the same content (the same coloured shapes
in the same relation, at other positions) under other wordings. Retrieval counts a retrieved item
as a hit when its content key equals the query's (``Judge.content_key``), not only when it is the
query's own pair, and R-precision draws its distractor captions from other contents only.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


def recall_at_k(
    similarity: np.ndarray,
    query_keys: Sequence[Hashable],
    gallery_keys: Sequence[Hashable],
    ks: Sequence[int] = (1, 5),
) -> dict[int, float]:
    """Fraction of queries whose top-k gallery items include one with the query's key.

    Args:
      similarity: ``[Q, G]`` scores (higher is closer).
      query_keys: Q content keys.
      gallery_keys: G content keys.
      ks: cut-offs.

    Returns:
      ``{k: recall@k}``. Ties are broken by gallery order (a stable sort).
    """
    similarity = np.asarray(similarity)
    q, g = similarity.shape
    if len(query_keys) != q or len(gallery_keys) != g:
        raise ValueError(
            f"similarity is {q}x{g} but there are {len(query_keys)} query and "
            f"{len(gallery_keys)} gallery keys."
        )
    order = np.argsort(-similarity, axis=1, kind="stable")
    key_ids = {key: i for i, key in enumerate(dict.fromkeys([*query_keys, *gallery_keys]))}
    qid = np.array([key_ids[k] for k in query_keys])
    gid = np.array([key_ids[k] for k in gallery_keys])
    hits = gid[order] == qid[:, None]  # [Q, G] in rank order
    return {int(k): float(hits[:, : int(k)].any(axis=1).mean()) for k in ks}


def best_candidates(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """For each prompt, the candidate image nearest its text: DALL-E's re-ranking by CLIP.

    Args:
      image_emb: ``[K, N, D]`` unit embeddings of K candidate images for each of N prompts.
      text_emb: ``[N, D]`` unit embeddings of the prompts.

    Returns:
      int ``[N]``: for each prompt, the index k of its candidate with the highest cosine (the
      first on a tie).
    """
    image_emb, text_emb = np.asarray(image_emb), np.asarray(text_emb)
    if image_emb.ndim != 3 or image_emb.shape[1:] != text_emb.shape:
        raise ValueError(
            f"image_emb must be [K, N, D] for text_emb [N, D]; got {image_emb.shape} and "
            f"{text_emb.shape}."
        )
    return np.argmax(np.sum(image_emb * text_emb[None], axis=-1), axis=0)


def clip_scores(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """Per pair, ``100 * max(cos(image_i, text_i), 0)`` (the torchmetrics definition)."""
    cos = np.sum(np.asarray(image_emb) * np.asarray(text_emb), axis=-1)
    return 100.0 * np.maximum(cos, 0.0)


def clip_score(image_emb: np.ndarray, text_emb: np.ndarray) -> float:
    """The mean of ``clip_scores`` over pairs."""
    return float(np.mean(clip_scores(image_emb, text_emb)))


def r_precision_hits(
    image_emb: np.ndarray, true_text_emb: np.ndarray, distractor_emb: np.ndarray
) -> np.ndarray:
    """Per image, whether its true caption outranks every distractor caption (bool ``[N]``).

    Args:
      image_emb: ``[N, D]``.
      true_text_emb: ``[N, D]``, image i's own caption.
      distractor_emb: ``[N, R, D]``, R captions of other contents per image (R = 99 by default).

    A tie counts as a miss.
    """
    image_emb = np.asarray(image_emb)
    true = np.sum(image_emb * np.asarray(true_text_emb), axis=-1)
    other = np.einsum("nd,nrd->nr", image_emb, np.asarray(distractor_emb))
    return true > other.max(axis=1)


def r_precision(
    image_emb: np.ndarray, true_text_emb: np.ndarray, distractor_emb: np.ndarray
) -> float:
    """R-precision with R = 1: the fraction of ``r_precision_hits``."""
    return float(np.mean(r_precision_hits(image_emb, true_text_emb, distractor_emb)))


def distractor_indices(
    query_keys: Sequence[Hashable],
    pool_keys: Sequence[Hashable],
    num: int = 99,
    seed: int = 0,
) -> np.ndarray:
    """For each query, ``num`` indices into the pool whose key differs from the query's.

    Draws without replacement where the pool allows, with replacement otherwise (e.g. digits,
    whose ten contents give fewer than 99 distinct captions of another content only through
    different wordings).

    Returns:
      int ``[Q, num]``.
    """
    rng = np.random.default_rng(seed)
    pool_keys = list(pool_keys)
    out = np.empty((len(query_keys), num), np.int64)
    for i, key in enumerate(query_keys):
        allowed = np.array([j for j, k in enumerate(pool_keys) if k != key])
        if allowed.size == 0:
            raise ValueError(f"No caption in the pool has a content other than {key!r}.")
        out[i] = rng.choice(allowed, size=num, replace=allowed.size < num)
    return out


def zero_shot_accuracy(image_emb: np.ndarray, candidate_emb: Sequence[np.ndarray]) -> float:
    """Fraction of images whose first candidate (the true caption) scores highest.

    Args:
      image_emb: ``[N, D]``.
      candidate_emb: N arrays ``[C_i, D]``; row 0 of each is the true caption.

    Returns:
      Accuracy; a tie with the true caption counts as a miss.
    """
    correct = []
    for img, cands in zip(np.asarray(image_emb), candidate_emb, strict=True):
        scores = np.asarray(cands) @ img
        correct.append(scores[0] > scores[1:].max() if len(scores) > 1 else True)
    return float(np.mean(correct))


def probe_accuracy(
    train_x: np.ndarray, train_y: Sequence, eval_x: np.ndarray, eval_y: Sequence
) -> float:
    """Accuracy on ``eval`` of a linear probe (L2-regularised logistic regression) fit on ``train``.

    On ``shapes``, a probe for the shape fit on embeddings of training colour-shape pairs and
    scored on held-out pairs tells whether an embedding keeps shape apart from colour: with
    separate colour and shape directions it transfers; with one direction per pair it cannot.

    Args:
      train_x, eval_x: features ``[N, D]`` and ``[M, D]``.
      train_y, eval_y: N and M labels (any hashable values; at least two classes in train).
    """
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000).fit(np.asarray(train_x), np.asarray(train_y))
    return float(np.mean(clf.predict(np.asarray(eval_x)) == np.asarray(eval_y)))


def generated_image_metrics(
    embedder,
    images: np.ndarray,
    captions: Sequence[str],
    keys: Sequence[Hashable],
    pool_captions: Sequence[str],
    pool_keys: Sequence[Hashable],
    num_distractors: int = 99,
    seed: int = 0,
) -> dict[str, float]:
    """CLIP score and R-precision of generated images against their prompts.

    Args:
      embedder: has ``embed_texts`` and ``embed_images`` (see the module docstring).
      images: uint8 ``[N, H, W, 3]`` generated for ``captions``.
      captions, keys: the N prompts and their content keys.
      pool_captions, pool_keys: where distractor captions come from.
      num_distractors: R - 1 distractors per image (99, as in the AttnGAN/DALL-E literature).
      seed: which distractors are drawn.

    Returns:
      ``{"clip_score": ..., "r_precision": ...}`` with their 95% intervals
      (``jaxgen.evaluation.intervals``).
    """
    from jaxgen.evaluation import intervals

    img = np.asarray(embedder.embed_images(images))
    txt = np.asarray(embedder.embed_texts(list(captions)))
    pool = np.asarray(embedder.embed_texts(list(pool_captions)))
    idx = distractor_indices(keys, pool_keys, num_distractors, seed)
    return {
        **intervals.mean("clip_score", clip_scores(img, txt)),
        **intervals.proportion("r_precision", r_precision_hits(img, txt, pool[idx])),
    }
