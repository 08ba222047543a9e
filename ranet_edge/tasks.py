"""What `ranet-edge calibrate` and `ranet-edge eval` do, as library calls with typed results.

Torch-free: the runtime, the data readers and numpy. The CLI parses options, calls one of
these and prints what comes back; Python users call the same functions.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import LabelledImages, load_labelled, split_val
from .errors import CalibrationError, InputError
from .info import bundle_info, dead_work_note
from .runtime import ExitChain, OperatingPoint, save_point
from .runtime.evaluation import PAPER_P, LatencyMeter, anytime, budgeted, collect, measure_latency
from .runtime.evaluation import calibration as cal
from .runtime.operating_points import check_rule

__all__ = [  # bundle_info and dead_work_note live in .info; they are part of this API all the same
    "Benchmark", "Calibrated", "DataOptions", "EarlyExit", "Evaluation", "ExitRow", "Goal", "Progress", "bench",
    "bundle_info", "calibrate", "choose", "dead_work_note", "early_exit", "evaluate", "no_progress",
    "unseen_by_calibration",
]

# progress(label, total) -> a context giving update(done): click.progressbar fits, or nothing
Progress = Callable[[str, int], contextlib.AbstractContextManager[Callable[[int], None]]]


@contextlib.contextmanager
def no_progress(_label: str, _total: int) -> Iterator[Callable[[int], None]]:
    """The default :data:`Progress`: reports nothing."""
    yield lambda _done: None


@dataclass(frozen=True)
class DataOptions:
    """Which labelled images to use: ``path`` (default: the shipped sample), optionally only
    the ``holdout`` split, of which ``val_size`` images fit thresholds (default: half). Labels name
    the last exit's classes; ``label_map`` maps them to the classes of exits of another count
    (:mod:`~ranet_edge.runtime.evaluation.labels`), without which such exits cannot be scored."""

    path: str | os.PathLike | None = None
    holdout: int | None = None
    seed: int = 0
    val_size: int | None = None
    label_map: str | os.PathLike | None = None

    def load(self) -> LabelledImages:
        """The images in memory (:func:`~ranet_edge.data.load_labelled`).

        Raises:
            DataError: no images to read, or ``holdout`` larger than the data set.
        """
        return load_labelled(self.path, self.holdout, self.seed)


@dataclass(frozen=True)
class Goal:
    """What an operating point is for: exactly one field is set.

    Raises:
        InputError: none, or more than one, is set.
    """

    p: float | None = None  # the paper's share parameter
    target_accuracy: float | None = None  # a fraction (values above 1 are read as percent)
    budget_mflops: float | None = None
    budget_ms: float | None = None

    def __post_init__(self) -> None:
        if sum(v is not None for v in (self.p, self.target_accuracy, self.budget_mflops, self.budget_ms)) != 1:
            raise InputError("give exactly one of --p, --target-accuracy, --budget-mflops, --budget-ms")


@dataclass(frozen=True)
class Calibrated:
    """An operating point fitted and saved to the bundle."""

    name: str
    point: OperatingPoint
    outcome: cal.Outcome  # on the fitting images
    val_images: int
    source: str
    path: Path  # the thresholds file written
    ece_before: float | None = None  # mean expected calibration error, with --temperature
    ece_after: float | None = None
    patience: list[dict] | None = None  # rule "patience": each t's accuracy, costs and exit counts

    def to_dict(self) -> dict:
        """The JSON ``calibrate --json`` prints (the ECE pair only with ``--temperature``)."""
        from .runtime.operating_points import thresholds_to_json

        out = {"name": self.name, "rule": self.point.rule,
               "thresholds": thresholds_to_json(self.point.thresholds, self.point.rule),
               "val_accuracy": self.outcome.accuracy, "expected_flops": self.point.expected_flops,
               "expected_ms": self.point.expected_ms, "exit_counts": self.outcome.exit_counts.tolist(),
               "val_images": self.val_images, "data": self.source, "temperatures": self.point.temperatures}
        if self.ece_before is not None:
            out["ece_before"], out["ece_after"] = self.ece_before, self.ece_after
        if self.patience is not None:
            out["patience"] = self.patience
        return out


def choose(conf: np.ndarray, correct: np.ndarray, flops: np.ndarray, exit_ms: np.ndarray, goal: Goal,
           provider: str) -> tuple[cal.Outcome, str, str]:
    """(outcome, method, default name) of the thresholds ``goal`` asks for.

    Costs are the official cumulative counts, so that budgets compare with the papers'
    (MSDNet's chain pays less at early exits; the measured ms shows what is really paid).

    Raises:
        CalibrationError: no point reaches the target accuracy, a budget below the first
            exit's cost, or ``p`` <= 0.
    """
    if goal.p is not None:
        res = cal.outcome(conf, correct, flops, cal.paper_thresholds(conf, goal.p))
        return res, f"paper p={goal.p:g}", f"p{goal.p:g}"
    if goal.target_accuracy is not None:
        target = goal.target_accuracy / 100 if goal.target_accuracy > 1 else goal.target_accuracy
        return (cal.for_accuracy(conf, correct, flops, target), f"cheapest with val accuracy >= {target:.4f}",
                f"acc{target:.3f}")
    if goal.budget_mflops is not None:
        return (cal.for_budget(conf, correct, flops / 1e6, goal.budget_mflops),
                f"most accurate within {goal.budget_mflops:g} MFLOPs", f"mflops{goal.budget_mflops:g}")
    return (cal.for_budget(conf, correct, exit_ms, goal.budget_ms),
            f"most accurate within {goal.budget_ms:g} ms on {provider}", f"ms{goal.budget_ms:g}")


def fitting_run(chain: ExitChain, data: DataOptions, temperature: bool, progress: Progress, rule: str = "max_prob"):
    """What fitting thresholds (a goal or a ladder) reads: (the labelled images, the indices fitted on,
    every exit's outputs there, fitted temperatures or None, the confidences and correctness the rule
    compares, each exit's FLOPs and its ms per image measured at batch 1, what ``--budget-ms`` means)."""
    labelled = data.load()
    images = labelled.images
    fit_idx, _ = split_val(len(images), data.val_size if data.val_size is not None else len(images), data.seed, False)
    with progress("running every exit", len(fit_idx)) as update:
        outs = collect(chain, images[fit_idx], labelled.labels[fit_idx], progress=update, label_map=data.label_map)
    temps = cal.fit_temperatures(outs.logits, [outs.at(k) for k in range(len(outs.logits))]) if temperature else None
    conf, correct = outs.conf_correct(temps, rule)
    flops = np.asarray(chain.manifest.exit_costs("flops"), np.float64)
    exit_ms = np.asarray(measure_latency(chain, chain.preprocess(images[:1])).exit_ms(per_image=True))
    return labelled, fit_idx, outs, temps, conf, correct, flops, exit_ms


def calibrate(bundle: str | os.PathLike, goal: Goal, data: DataOptions = DataOptions(), *,
              temperature: bool = False, name: str | None = None, make_default: bool = False,
              provider: str = "cpu", threads: int | None = None,
              progress: Progress = no_progress, rule: str = "max_prob") -> Calibrated:
    """Fit exit thresholds for ``goal`` on labelled images and store them in the bundle as
    ``name`` (default: from the goal, prefixed with the rule unless ``max_prob``), the bundle's
    default when ``make_default``. ``rule="entropy"`` fits max entropies as ``max_prob`` fits
    confidences; ``rule="patience"`` evaluates every ``t`` (``Calibrated.patience``) and
    stores the one the goal picks (``p`` does not apply).

    Raises:
        BundleError: ``bundle`` is missing, malformed or tampered with.
        ProviderError: ``provider`` is not offered by the installed onnxruntime.
        DataError: the images cannot be read, or ``data.val_size`` does not fit them.
        CalibrationError: as :func:`choose`; an unknown rule, or ``p`` with ``patience``.
    """
    if check_rule(rule) == "patience" and goal.p is not None:
        raise CalibrationError("--p is the paper's threshold procedure; with --rule patience give "
                               "--target-accuracy, --budget-mflops or --budget-ms")
    chain = ExitChain.load(bundle, provider=provider, threads=threads)
    labelled, fit_idx, outs, temps, conf, correct, flops, exit_ms = fitting_run(chain, data, temperature, progress, rule)
    session_provider = chain.session_providers[0][0]
    table = None
    if rule == "patience":
        target = goal.target_accuracy / 100 if (goal.target_accuracy or 0) > 1 else goal.target_accuracy
        res, method, default_name, table = cal.choose_patience(outs.logits, correct, flops, exit_ms, temps, target,
                                                               goal.budget_mflops, goal.budget_ms)
    else:
        res, method, default_name = choose(conf, correct, flops, exit_ms, goal, session_provider)
    thresholds = cal.entropy_thresholds(res.thresholds) if rule == "entropy" else res.thresholds
    point = OperatingPoint.fitted(thresholds, res.exit_counts, flops, exit_ms, method=method if rule == "max_prob" else f"{rule}: {method}",
                                  val_accuracy=res.accuracy, temperatures=temps, provider=session_provider, rule=rule)
    name = name or (default_name if rule in ("max_prob", "patience") else f"{rule}-{default_name}")
    path = save_point(bundle, name, point, default=make_default)
    ece = (None, None)
    if temperature:
        ece = tuple(float(np.mean([cal.expected_calibration_error(pk, outs.at(k))
                                   for k, pk in enumerate(outs.probs(t))])) for t in (None, temps))
    return Calibrated(name, point, res, int(len(fit_idx)), labelled.source, path, *ece, patience=table)



@dataclass(frozen=True)
class Evaluation:
    """Anytime accuracy per exit and the paper's budgeted-batch curve, with measured latency."""

    bundle: str
    source: str
    val_images: int
    eval_images: int
    provider: str
    batch_size: int
    anytime: list[dict]  # per exit: top1, top5, flops, ms (to the exit, per image)
    budgeted: list[dict]  # per p: thresholds, accuracy, expected_flops, measured_ms, expected_ms, exit_counts...
    latency: dict | None = None  # the stage measurement behind every ms (Latency.to_dict())

    def to_dict(self) -> dict:
        """The JSON ``eval --json`` writes."""
        return {"bundle": self.bundle, "data": self.source, "val_images": self.val_images,
                "eval_images": self.eval_images, "provider": self.provider, "batch_size": self.batch_size,
                "anytime": self.anytime, "budgeted": self.budgeted, "latency": self.latency}


def evaluate(bundle: str | os.PathLike, data: DataOptions = DataOptions(), *, provider: str = "cpu",
             threads: int | None = None, batch_size: int = 1, progress: Progress = no_progress) -> Evaluation:
    """Fit the paper's thresholds on one split, then evaluate on the other split: every exit
    alone (anytime) and a real timed chain run at each of the paper's 39 values of p.

    Every ms comes from one stage measurement at ``batch_size`` on the first eval images
    (:class:`~ranet_edge.runtime.evaluation.LatencyMeter`, a round before each point's timed
    pass): the anytime ms to each exit and each point's ``expected_ms``, set beside the
    point's real timed run (``measured_ms``).

    Raises:
        InputError: ``batch_size`` is below 1.
        BundleError: as :func:`calibrate`.
        ProviderError: as :func:`calibrate`.
        DataError: the images cannot be read, or are too few to split.
    """
    if batch_size < 1:
        raise InputError("--batch-size must be >= 1")
    chain = ExitChain.load(bundle, provider=provider, threads=threads)
    labelled = data.load()
    images, labels = labelled.images, labelled.labels
    val_idx, eval_idx = split_val(len(images), data.val_size, data.seed, True)
    first = eval_idx[np.arange(batch_size) % len(eval_idx)]
    # a round before each of the 39 timed passes: 20 calls of every case at batch 1, fewer at larger batches
    meter = LatencyMeter(chain, chain.preprocess(images[first]), block=max(3, 20 // batch_size),
                         settle=max(1, 5 // batch_size))
    flops = chain.manifest.exit_costs("flops")
    with progress("running every exit", len(images)) as update:
        val = collect(chain, images[val_idx], labels[val_idx], progress=update, label_map=data.label_map)
        test = collect(chain, images[eval_idx], labels[eval_idx], progress=update, label_map=data.label_map)
    with progress(f"budgeted runs ({len(PAPER_P)} operating points)", len(PAPER_P)) as update:
        bud_rows = budgeted(chain, val, images[eval_idx], test.exit_labels or labels[eval_idx], flops, batch_size,
                            progress=update, run_costs=chain.manifest.exit_costs("run_flops"), latency=meter)
    latency = meter.result()
    any_rows = anytime(test, flops, latency.exit_ms(per_image=True))
    return Evaluation(str(bundle), labelled.source, int(len(val_idx)), int(len(eval_idx)),
                      chain.session_providers[0][0], batch_size, any_rows, bud_rows, latency.to_dict())



@dataclass(frozen=True)
class Benchmark:
    """`ranet-edge bench`'s figures (``result``, what the JSON holds) and what they were run on."""

    result: dict
    source: str  # the images of adaptive mode
    exits_per_graph: list[int]
    assumed_threshold: float | None  # set when no operating point was stored or given


def bench(bundle: str | os.PathLike, opts, *, provider: str = "cpu", threads: int | None = None,
          data_path: str | os.PathLike | None = None, progress: Callable[[str], None] = lambda s: None) -> Benchmark:
    """Load the bundle and run :func:`ranet_edge.runtime.evaluation.run_bench` on real images.

    ``opts`` is a :class:`~ranet_edge.runtime.evaluation.BenchOptions`; with no thresholds and no
    default operating point in the bundle, adaptive mode uses 0.9 at every exit.

    Raises:
        InputError: a batch size, iteration or image count below 1, or warm-up below 0.
        BundleError: as :func:`calibrate`.
        ProviderError: as :func:`calibrate`.
        DataError: the images cannot be read.
    """
    from dataclasses import replace

    from .runtime.evaluation import run_bench

    if min(opts.batch_size, opts.iters, opts.adaptive_images) < 1 or opts.warmup < 0:
        raise InputError("--batch-size, --iters and --images must be >= 1, --warmup >= 0")
    chain = ExitChain.load(bundle, provider=provider, threads=threads)
    assumed = None
    if opts.thresholds is None and chain.default_operating_point is None:
        assumed = 0.9
        opts = replace(opts, thresholds=assumed)
    labelled = load_labelled(data_path)
    result = run_bench(chain, labelled.images, opts, threads, progress=progress)
    return Benchmark(result, labelled.source, [len(g.exits) for g in chain.graphs], assumed)


@dataclass(frozen=True)
class ExitRow:
    """One exit of :class:`EarlyExit`: the images that left there and how many were right."""

    exit: int
    images: int
    accuracy: float | None  # None when no image left here
    flops: float  # the official cumulative count to this exit


@dataclass(frozen=True)
class EarlyExit:
    """Where labelled images leave a bundle at its default operating point."""

    rows: list[ExitRow]
    accuracy: float  # adaptive top-1
    expected_flops: float  # mean official cumulative FLOPs per image
    final_accuracy: float  # the last exit alone
    final_flops: float


def early_exit(bundle: str | os.PathLike, images: np.ndarray, labels: np.ndarray,
               threads: int | None = None, thresholds=None) -> EarlyExit:
    """Predict ``images`` (uint8 NHWC) with per-sample exit and compare with the last exit alone.

    Raises:
        BundleError: ``bundle`` is missing, malformed or tampered with.
        CalibrationError: ``thresholds`` is malformed or names no stored operating point.
    """
    chain = ExitChain.load(bundle, threads=threads)
    batch = chain.preprocess(images)
    res = chain.predict(batch, thresholds)
    final = chain.run_all(batch)[-1].argmax(1)
    flops = np.asarray(chain.manifest.exit_costs("flops"), float)
    rows = []
    for k in range(chain.num_exits):
        m = res.exits == k
        rows.append(ExitRow(k, int(m.sum()), float((res.labels[m] == labels[m]).mean()) if m.any() else None,
                            float(flops[k])))
    return EarlyExit(rows, float((res.labels == labels).mean()), float(flops[res.exits].mean()),
                     float((final == labels).mean()), float(flops[-1]))


def unseen_by_calibration(data: DataOptions) -> LabelledImages:
    """The images of ``data`` that :func:`calibrate` with the same ``data`` did not fit
    thresholds on (its evaluation split).

    Raises:
        InputError: ``data.val_size`` is None.
        DataError: as :func:`calibrate`.
    """
    if data.val_size is None:
        raise InputError("calibrate fits on every image when val_size is not given, so none is unseen; "
                         "set DataOptions.val_size")
    labelled = data.load()
    _, rest = split_val(len(labelled.labels), data.val_size, data.seed, True)
    return LabelledImages(labelled.images[rest], labelled.labels[rest], labelled.source)
