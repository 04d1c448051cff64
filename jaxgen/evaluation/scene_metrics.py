"""Text2Scene's abstract-scene metrics, computed as the paper's evaluator computes them.

For a predicted and a true scene (lists of object dicts with "name", "x", "y" grid cells and
attributes):

- **U-obj**: objects are matched greedily, the predictions taken in (category, x, y) order, each
  to the unmatched true object of the same category with the highest position similarity
  ``exp(-0.5 * sum(((p - g) / 0.2) ** 2))`` on positions normalised to [0, 1]. Precision is
  matched / predicted, recall matched / true; *U-obj coord* is the mean similarity of the
  matched pairs.
- **B-obj**: the bigrams of a scene are its pairs of objects (i < j in that order) whose boxes
  overlap; a bigram is its two categories and the polar form (length l, angle t in [0, 1]) of
  the offset between the two. Predicted bigrams are matched greedily to true ones with the same
  categories by ``exp(-0.5 * (((l_a - l_b) / 0.2) ** 2 + (min(|dt|, 1 - |dt|) / 0.2) ** 2))``;
  precision, recall and *B-obj coord* as for U-obj. Scenes whose truth has no bigram are left
  out of the B-obj means.
- **Attributes** (size, flip, pose, expression): accuracy over the matched objects the attribute
  applies to. Here each attribute is counted over the objects it applies to, pooled over scenes;
  the reference code averages per-scene accuracies in which a scene without a person counts 0
  for pose and expression, which mixes the attribute with how many scenes have people.

A scene's scores are averaged over scenes (`summarize`), with 95% intervals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from jaxgen.evaluation import intervals

SIGMA = 0.2


def _position(obj: dict, grid: int) -> tuple[float, float]:
    return (int(obj["x"]) + 0.5) / grid, (int(obj["y"]) + 0.5) / grid


def _sorted(objects: Sequence[dict], categories: Sequence[str], grid: int) -> list[dict]:
    def key(o):
        return (categories.index(o["name"]), *_position(o, grid))

    return sorted(objects, key=key)


def _greedy_match(preds, truths, same, similarity) -> list[tuple[int, int, float]]:
    """(pred index, true index, similarity) of each greedy match, in prediction order."""
    used, out = set(), []
    for i, p in enumerate(preds):
        best, best_sim = None, -1.0
        for j, t in enumerate(truths):
            if j in used or not same(p, t):
                continue
            sim = similarity(p, t)
            if sim > best_sim:  # ties keep the first, as the reference does
                best, best_sim = j, sim
        if best is not None:
            used.add(best)
            out.append((i, best, best_sim))
    return out


def _bigrams(objects, grid, box_of):
    out = []
    for i in range(len(objects)):
        for j in range(i + 1, len(objects)):
            a, b = objects[i], objects[j]
            (xa, ya), (xb, yb) = _position(a, grid), _position(b, grid)
            (wa, ha), (wb, hb) = box_of(a), box_of(b)
            overlap_x = min(xa + wa / 2, xb + wb / 2) - max(xa - wa / 2, xb - wb / 2)
            overlap_y = min(ya + ha / 2, yb + hb / 2) - max(ya - ha / 2, yb - hb / 2)
            if overlap_x <= 0 or overlap_y <= 0:
                continue
            dx, dy = xa - xb, ya - yb
            length = math.sqrt(dx * dx + dy * dy + 1e-12)
            angle = 0.5 * (math.atan2(dy, dx) + math.pi) / math.pi
            out.append((a["name"], b["name"], length, angle))
    return out


def _bigram_similarity(p, t) -> float:
    dl = (p[2] - t[2]) / SIGMA
    dt = abs(p[3] - t[3])
    dt = min(dt, 1.0 - dt) / SIGMA
    return math.exp(-0.5 * (dl * dl + dt * dt))


def scene_scores(
    predicted: Sequence[dict],
    truth: Sequence[dict],
    *,
    categories: Sequence[str],
    grid: int,
    box_of: Callable[[dict], tuple[float, float]],
    attributes: Sequence[str] = (),
    applies: Callable[[str, str], bool] = lambda name, attr: True,
) -> dict:
    """The metrics of one predicted scene against its truth.

    Args:
      predicted, truth: object dicts ("name", "x", "y" and the attribute keys).
      categories: the category names, in the order that sorts objects.
      grid: the location grid side (positions are cell centres over ``grid``).
      box_of: an object's (width, height) as fractions of the canvas.
      attributes: attribute keys compared on matched objects; ``applies(name, attr)`` says
        which objects have them.

    Returns:
      {"u_precision", "u_recall", "u_coord"} floats; "b_precision", "b_recall", "b_coord"
      (None when the truth has no bigram); and per attribute ``(correct, counted)``.
    """
    preds, truths = _sorted(predicted, categories, grid), _sorted(truth, categories, grid)

    def position_similarity(p, t):
        (px, py), (tx, ty) = _position(p, grid), _position(t, grid)
        return math.exp(-0.5 * (((px - tx) / SIGMA) ** 2 + ((py - ty) / SIGMA) ** 2))

    matches = _greedy_match(preds, truths, lambda p, t: p["name"] == t["name"], position_similarity)
    n = len(matches)
    out = {
        "u_precision": n / len(preds) if preds else 0.0,
        "u_recall": n / len(truths) if truths else float(not preds),
        "u_coord": float(np.mean([m[2] for m in matches])) if matches else 0.0,
    }
    pb, tb = _bigrams(preds, grid, box_of), _bigrams(truths, grid, box_of)
    if tb:
        bm = _greedy_match(pb, tb, lambda p, t: p[:2] == t[:2], _bigram_similarity)
        out["b_precision"] = len(bm) / len(pb) if pb else 0.0
        out["b_recall"] = len(bm) / len(tb)
        out["b_coord"] = float(np.mean([m[2] for m in bm])) if bm else 0.0
    else:
        out["b_precision"] = out["b_recall"] = out["b_coord"] = None
    for attr in attributes:
        pairs = [(preds[i], truths[j]) for i, j, _ in matches if applies(truths[j]["name"], attr)]
        out[attr] = (sum(p[attr] == t[attr] for p, t in pairs), len(pairs))
    return out


def summarize(scores: Sequence[dict], attributes: Sequence[str] = ()) -> dict[str, float]:
    """Means over scenes with 95% intervals (``<key>``, ``<key>_lo``, ``<key>_hi``); attribute
    accuracies pooled over the objects counted (Wilson intervals), as ``<attr>_accuracy`` with
    ``<attr>_count``."""
    out = {}
    for key in ("u_precision", "u_recall", "u_coord", "b_precision", "b_recall", "b_coord"):
        values = [s[key] for s in scores if s[key] is not None]
        if values:
            out.update(intervals.mean(key, values))
    out["num_scenes"] = float(len(scores))
    out["num_bigram_scenes"] = float(sum(s["b_recall"] is not None for s in scores))
    for attr in attributes:
        correct = sum(s[attr][0] for s in scores)
        counted = sum(s[attr][1] for s in scores)
        if counted:
            out.update(intervals.rate(f"{attr}_accuracy", correct / counted, counted))
            out[f"{attr}_count"] = float(counted)
    return out
