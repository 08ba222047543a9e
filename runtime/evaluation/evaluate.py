"""Anytime and budgeted-batch evaluation of a chain on labelled images (torch-free)."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ranet_edge.errors import CalibrationError

from ..chain import ExitChain
from ..decision import entropy, softmax
from .calibration import paper_thresholds
from .labels import exit_labels, read_label_map
from .latency import LatencyMeter, timed_passes

__all__ = [
    "PAPER_P", "ExitOutputs", "anytime", "budgeted", "collect", "plot",
]

PAPER_P = [i / 20 for i in range(1, 40)]  # the paper's budgeted-batch curve: p = 1/20 .. 39/20


@dataclass
class ExitOutputs:
    """Every exit's logits on a labelled set (from chain.run_all)."""

    logits: list[np.ndarray]  # K arrays (n, C)
    labels: np.ndarray  # in the last exit's classes
    #: K arrays (n,): each exit's labels in its own classes (exits of another class count than the
    #: last: mapped, see .labels); None: ``labels`` at every exit
    exit_labels: list[np.ndarray] | None = None

    def at(self, k: int) -> np.ndarray:
        """The labels exit ``k``'s answers are scored against."""
        return self.labels if self.exit_labels is None else self.exit_labels[k]

    def probs(self, temperatures: np.ndarray | None = None) -> np.ndarray:
        """(K, n, C) float32 softmax of every exit, by the runtime's rule (exits of fewer classes
        than the widest: zero beyond their own, as ``Prediction.probabilities``)."""
        t = np.ones(len(self.logits)) if temperatures is None else temperatures
        width = max(z.shape[1] for z in self.logits)
        return np.stack([np.pad(softmax(z, float(tk)), ((0, 0), (0, width - z.shape[1])))
                         for z, tk in zip(self.logits, t)])

    def conf_correct(self, temperatures: np.ndarray | None = None,
                     rule: str = "max_prob") -> tuple[np.ndarray, np.ndarray]:
        """(K, n) float32 confidences -- exactly what the chain compares with thresholds;
        for ``rule="entropy"`` the negated entropies, exactly what it compares, negated, with
        max entropies -- and whether each exit's top-1 is right."""
        p = self.probs(temperatures)  # the largest probability is exactly decision.confidence
        correct = np.stack([pk.argmax(axis=1) == self.at(k) for k, pk in enumerate(p)])
        if rule == "entropy":
            t = np.ones(len(self.logits)) if temperatures is None else temperatures
            return -np.stack([entropy(z, float(tk)) for z, tk in zip(self.logits, t)]), correct
        return p.max(axis=2), correct


def collect(chain: ExitChain, images: np.ndarray, labels: np.ndarray, batch_size: int = 256,
            progress: Callable[[int], None] | None = None, label_map: str | os.PathLike | None = None) -> ExitOutputs:
    """Run every exit on uint8 NHWC ``images``, ``batch_size`` at a time (``chain.run_all``:
    no early exit); ``progress`` is called with the number of images of each batch done.
    ``labels`` name the last exit's classes; exits of another class count are scored through
    ``label_map`` (a JSON file, see :mod:`.labels`).

    Raises:
        CalibrationError: when ``images`` is empty, ``labels`` name a class the bundle
            does not have, or an exit of another class count has no mapping in ``label_map``
            (or ``label_map`` is malformed).
        InputError: when the images are not uint8 RGB (from ``chain.preprocess``).
    """
    if len(images) == 0:
        raise CalibrationError("the dataset is empty; pass --data with labelled images")
    n_classes = chain.manifest.num_classes
    if labels.max() >= n_classes:
        raise CalibrationError(f"labels go up to {int(labels.max())} but the bundle has {n_classes} classes; "
                               "use a dataset with the bundle's classes")
    mapping = None if label_map is None else read_label_map(label_map, chain.exit_classes, n_classes)
    per_exit = exit_labels(labels, chain.exit_classes, n_classes, mapping)  # before the long run
    parts: list[list[np.ndarray]] = []
    for start in range(0, len(images), batch_size):
        x = chain.preprocess(images[start:start + batch_size])
        parts.append(chain.run_all(x))
        if progress:
            progress(len(x))
    return ExitOutputs([np.concatenate(col) for col in zip(*parts)], labels,
                       None if all(e is labels for e in per_exit) else per_exit)


def anytime(outputs: ExitOutputs, flops: list[int], exit_ms: list[float]) -> list[dict]:
    """Anytime prediction: each exit alone on every image.

    Returns:
        One row per exit, with ``exit``, ``top1`` and ``top5`` (fractions), and the ``flops``
            and ``ms`` given for it.
    """
    rows = []
    for k, z in enumerate(outputs.logits):
        top5 = np.argsort(-z, axis=1)[:, :5]
        rows.append({
            "exit": k, "top1": float((z.argmax(1) == outputs.at(k)).mean()),
            "top5": float((top5 == outputs.at(k)[:, None]).any(1).mean()),
            "flops": int(flops[k]), "ms": float(exit_ms[k]),
        })
    return rows


def budgeted(chain: ExitChain, val: ExitOutputs, eval_images: np.ndarray,
             eval_labels: np.ndarray | list[np.ndarray], costs: list[int], batch_size: int = 1, ps: list[float] = PAPER_P,
             progress: Callable[[int], None] | None = None, run_costs: list[int] | None = None,
             latency: LatencyMeter | None = None) -> list[dict]:
    """For each p: thresholds fit on ``val``, then a real timed chain run on the eval images
    (:func:`~.latency.timed_passes`: one ``predict`` call per batch, each timed).

    ``costs`` are the official cumulative counts per exit (comparable with the papers);
    ``run_costs``, if given, what a sample leaving there pays in the chain
    (``expected_run_flops``). With ``latency`` (the one stage measurement), a round of it
    runs before each pass, and each row also gets ``expected_ms`` (exit shares times the
    measured time to each exit, from every round) and ``real_over_expected``
    (``measured_ms / expected_ms``). ``eval_labels``: the eval images' labels, or each exit's
    (``ExitOutputs.exit_labels``, when exits differ in class count).

    Returns:
        One row per p, with ``p``, ``thresholds`` (1e8 where nobody leaves), ``accuracy`` on
            the eval images, ``expected_flops``, ``expected_run_flops``, ``measured_ms`` and
            ``measured_wall_ms`` per image, ``preempted`` and ``exit_counts``.

    Raises:
        CalibrationError: when a ``p`` is not above 0.
        InputError: when the eval images are not uint8 RGB.
    """
    conf, _ = val.conf_correct()
    x_all = chain.preprocess(eval_images)
    rows = []
    for p in ps:
        t = paper_thresholds(conf, p)
        thresholds = [float(v) if v <= 1.0 else np.inf for v in t[:-1]]  # 1e8: nobody exits
        if latency is not None:
            latency.round()
        run = timed_passes(chain, x_all, {"p": thresholds}, batch_size)["p"]
        counts = np.bincount(run.exits, minlength=chain.num_exits)
        row = {
            "p": p, "thresholds": [float(v) for v in t],
            "accuracy": float((run.labels == _labels_at(eval_labels, run.exits)).mean()),
            "expected_flops": float(counts @ np.asarray(costs, np.float64) / len(x_all)),
            "expected_run_flops": float(counts @ np.asarray(run_costs if run_costs is not None else costs,
                                                            np.float64) / len(x_all)),
            "measured_ms": run.ms_per_image, "measured_wall_ms": run.wall_ms_per_image,
            "preempted": run.preempted, "exit_counts": counts.tolist(),
        }
        rows.append(row)
        if progress:
            progress(1)
    if latency is not None:
        lat = latency.result()
        for row in rows:
            row["expected_ms"] = lat.expected_ms(row["exit_counts"])
            row["real_over_expected"] = row["measured_ms"] / row["expected_ms"]
    return rows


def _labels_at(labels: np.ndarray | list[np.ndarray], exits: np.ndarray) -> np.ndarray:
    """Each sample's label at the exit it took: ``labels`` itself, or from per-exit labels."""
    return labels if isinstance(labels, np.ndarray) else np.stack(labels)[exits, np.arange(len(exits))]


def plot(anytime_rows: list[dict], budget_rows: list[dict], path: str, title: str = "") -> None:
    """Write a PNG to ``path``: accuracy against expected MFLOPs and against measured ms per
    image, the budgeted rows as a curve and the anytime rows as points.

    Raises:
        ImportError: when matplotlib is not installed (the ``plot`` extra; ``ranet-edge eval
            --plot`` checks for it before the run).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key_a, key_b, label in ((axes[0], "flops", "expected_flops", "MFLOPs per image"),
                                    (axes[1], "ms", "measured_ms", "ms per image (measured)")):
        scale = 1e-6 if key_a == "flops" else 1.0
        pts = sorted((r[key_b] * scale, 100 * r["accuracy"]) for r in budget_rows)
        ax.plot(*zip(*pts), "-o", ms=3, label="budgeted batch (p = 1/20 .. 39/20)")
        ax.plot([r[key_a] * scale for r in anytime_rows], [100 * r["top1"] for r in anytime_rows],
                "s", label="anytime: each exit alone")
        for r in anytime_rows:
            ax.annotate(f"exit {r['exit']}", (r[key_a] * scale, 100 * r["top1"]), fontsize=7,
                        textcoords="offset points", xytext=(4, -8))
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
