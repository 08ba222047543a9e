"""Training RANets and MSDNets with the paper's recipe; single process or under ``torchrun`` (DDP).

All randomness of an epoch (order, crops, flips) derives from ``(seed, epoch, rank)``, and
the learning rate is a function of training progress, so ``--resume`` from the last
checkpoint continues exactly as an uninterrupted run would.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ranet_edge.runtime.preprocess import PreprocessSpec, fit_image, normalize

from .architectures import ArchConfig, config_from_dict
from .checkpoint import FORMAT, read_checkpoint_file
from .data import Dataset, open_dataset, split
from .errors import CheckpointError, DataError
from .model import build_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    """How to train; the defaults are the paper's CIFAR policy (docs/reference/ranet.md,
    "Training policy")."""

    data: str  # dataset path, any format ranet_edge.data reads
    out: str = "runs/ranet"  # checkpoint directory (last.pt, best.pt, log.jsonl)
    epochs: int = 300
    batch_size: int = 64
    lr: float = 0.1
    schedule: str = "multistep"  # multistep: x0.1 at 50% and 75%; cosine: per iteration
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False
    val_size: int = 5000
    seed: int = 0
    workers: int = 0  # decoding threads for file datasets (0: main thread)
    augment: str = "auto"  # auto (from config.data), cifar or imagenet
    resume: bool = False
    init: str | None = None  # start from this checkpoint's weights (any supported layout)
    max_batches: int | None = None  # stop each epoch early (tests)


@dataclass
class EpochResult:
    """One epoch as the log and ``history`` of a checkpoint record it."""

    epoch: int
    train_loss: float
    val_acc: list[float]  # per exit, percent
    lr: float
    seconds: float


def learning_rate(opts: TrainOptions, progress: float) -> float:
    """LR at ``progress`` epochs into training (fractional for cosine): ``multistep`` is 0.1x
    from 50% and 0.01x from 75% of ``opts.epochs``, ``cosine`` anneals to 0 by the end."""
    if opts.schedule == "cosine":
        return 0.5 * opts.lr * (1.0 + math.cos(math.pi * min(progress / opts.epochs, 1.0)))
    epoch = int(progress)
    factor = 1.0
    for milestone in (0.5, 0.75):
        at = int(opts.epochs * milestone)
        if at > 0 and epoch >= at:
            factor *= 0.1
    return opts.lr * factor


class _Augmenter:
    """Pad-4 random crop + flip (CIFAR) or random-resized crop + flip (ImageNet)."""

    def __init__(self, spec: PreprocessSpec, kind: str):
        self.spec, self.kind = spec, kind

    def __call__(self, images: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
        s = self.spec.size
        out = np.empty((len(images), s, s, 3), np.uint8)
        for n, im in enumerate(images):
            if self.kind == "cifar":
                im = fit_image(im, PreprocessSpec(s, self.spec.mean, self.spec.std))
                padded = np.zeros((s + 8, s + 8, 3), np.uint8)
                padded[4:4 + s, 4:4 + s] = im
                y, x = rng.integers(0, 9, size=2)
                im = padded[y:y + s, x:x + s]
            else:
                im = _random_resized_crop(im, s, rng)
            out[n] = im[:, ::-1] if rng.random() < 0.5 else im
        return normalize(out, self.spec)


def _random_resized_crop(im: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    import cv2

    h, w = im.shape[:2]
    for _ in range(10):
        area = h * w * rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            return cv2.resize(im[y:y + ch, x:x + cw], (size, size), interpolation=cv2.INTER_LINEAR)
    return fit_image(im, PreprocessSpec(size, (0, 0, 0), (1, 1, 1), resize=size))


def _param_checksum(model: torch.nn.Module) -> float:
    """A fingerprint of the trainable weights, compared across DDP ranks. (BN running
    statistics are per rank between DDP's buffer broadcasts; rank 0's are the ones saved.)"""
    with torch.no_grad():
        return float(sum((p.double() * (i % 7 + 1)).sum() for i, p in enumerate(model.parameters())))


def save_atomic(obj: dict, path: Path) -> None:
    """``torch.save`` to ``path.tmp`` then rename: an interrupted save never leaves half a
    checkpoint under ``path``.

    Raises:
        OSError: the directory cannot be written.
    """
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def evaluate(model: torch.nn.Module, data: Dataset, spec: PreprocessSpec, batch_size: int = 256) -> list[float]:
    """Top-1 accuracy (percent) of every exit on ``data``, preprocessed as ``spec`` says
    (no augmentation); leaves ``model`` in eval mode.

    Raises:
        DataError: an image cannot be decoded.
    """
    model.eval()
    correct = torch.zeros(model.num_exits, dtype=torch.int64)
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            idx = np.arange(start, min(start + batch_size, len(data)))
            x = torch.from_numpy(normalize(np.stack([fit_image(im, spec) for im in data.images(idx)]), spec))
            y = torch.from_numpy(data.labels[idx])
            for k, logits in enumerate(model(x)):
                correct[k] += (logits.argmax(1) == y).sum()
    return [round(100.0 * c / max(len(data), 1), 3) for c in correct.tolist()]


def train(config: ArchConfig, opts: TrainOptions, log: Callable[[str], None] | None = None) -> list[EpochResult]:
    """Train (or resume) and return the results of the epochs run in this call.

    Progress lines go to this module's ``logging`` logger (or to ``log``, if given).
    Checkpoints (``last.pt`` every epoch, ``best.pt`` when the last exit improves) go to
    ``opts.out``; under ``torchrun`` only rank 0 writes and logs.

    Raises:
        DataError: the data set cannot be read, has more classes than the model outputs, or
            is too small for ``opts.val_size``.
        CheckpointError: ``opts.resume`` finds a ``last.pt`` that is not a ranet-edge training
            checkpoint or was trained with another architecture, or ``opts.init`` cannot be
            loaded into this architecture.
        ConfigError: ``config`` describes a network whose forward cannot run.
    """
    log = log or logger.info
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    main = rank == 0
    out = Path(opts.out)
    dataset = open_dataset(opts.data)
    if len(dataset.classes) > config.num_classes:
        raise DataError(f"{opts.data} has {len(dataset.classes)} classes but the model has "
                        f"{config.num_classes} outputs; pick a matching --data/--preset")
    train_idx, val_idx = split(len(dataset), opts.val_size, opts.seed)
    train_set, val_set = dataset.subset(train_idx), dataset.subset(val_idx)
    spec = PreprocessSpec.for_dataset(config.data)
    kind = opts.augment if opts.augment != "auto" else ("imagenet" if config.is_imagenet else "cifar")
    if kind == "cifar" and train_set.files is not None:
        train_set, val_set = train_set.materialize(), val_set.materialize()
    augment = _Augmenter(spec, kind)

    torch.manual_seed(opts.seed)
    model = build_model(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=opts.lr, momentum=opts.momentum,
                                weight_decay=opts.weight_decay, nesterov=opts.nesterov)
    start_epoch, best, history = 0, 0.0, []
    last_path = out / "last.pt"
    if opts.resume and last_path.exists():
        state = read_checkpoint_file(last_path)
        if state.get("format") != FORMAT or "optimizer" not in state:
            raise CheckpointError(f"{last_path} is not a ranet-edge training checkpoint; remove it or drop --resume")
        if config_from_dict(state["config"]) != config:
            raise CheckpointError(f"{last_path} was trained with another architecture; use its flags or a new --out")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best, history = int(state["epoch"]), float(state["best_prec1"]), list(state["history"])
        if main:
            log(f"resuming from {last_path} after epoch {start_epoch}")
    elif opts.resume and main:
        log(f"--resume: no {last_path} yet, starting fresh")
    if opts.init and start_epoch == 0:
        from .checkpoint import load_checkpoint

        model.load_state_dict(load_checkpoint(opts.init, config).model.state_dict())
        if main:
            log(f"starting from the weights of {opts.init}")
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    if main:
        out.mkdir(parents=True, exist_ok=True)
    steps = math.ceil(len(train_set) / (opts.batch_size * world))
    if opts.max_batches:
        steps = min(steps, opts.max_batches)
    results = []
    # Decoding threads for file datasets (OpenCV releases the GIL while decoding).
    pool = ThreadPoolExecutor(opts.workers) if opts.workers > 0 and train_set.files is not None else None
    for epoch in range(start_epoch, opts.epochs):
        t0 = time.time()
        rng = np.random.default_rng([opts.seed, epoch, rank])
        order = np.random.default_rng([opts.seed, epoch]).permutation(len(train_set))
        order = order[rank::world]
        net.train()
        total, seen = 0.0, 0
        for step in range(steps):
            lr = learning_rate(opts, epoch + step / steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = order[step * opts.batch_size:(step + 1) * opts.batch_size]
            if len(idx) == 0:
                break
            images = list(pool.map(train_set.image, idx)) if pool else train_set.images(idx)
            x = torch.from_numpy(augment(images, rng))
            y = torch.from_numpy(train_set.labels[idx])
            loss = sum(F.cross_entropy(logits, y) for logits in net(x))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            if main and (step % 50 == 0 or step == steps - 1):
                rate = seen * world / max(time.time() - t0, 1e-9)
                print(f"\repoch {epoch + 1}/{opts.epochs} [{step + 1}/{steps}] loss {total / seen:.3f} "
                      f"lr {lr:.4f} {rate:.0f} img/s", end="", file=sys.stderr, flush=True)
        if main:
            print(file=sys.stderr)
        checksums = [_param_checksum(model)]
        if world > 1:  # every rank must hold the same weights after the all-reduced steps
            gathered = [None] * world
            dist.all_gather_object(gathered, checksums[0])
            checksums = gathered
        if main:
            acc = evaluate(model, val_set, spec) if len(val_set) else [0.0] * model.num_exits
            res = EpochResult(epoch + 1, total / max(seen, 1), acc, lr, round(time.time() - t0, 1))
            history.append(asdict(res))
            state = {
                "format": FORMAT, "version": 1, "config": config.to_dict(), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "best_prec1": max(best, acc[-1]),
                "val_acc": acc, "classes": dataset.classes, "history": history,
                "train_options": asdict(opts), "world_size": world, "rank_checksums": checksums,
            }
            save_atomic(state, last_path)
            if acc[-1] >= best:
                best = acc[-1]
                save_atomic(state, out / "best.pt")
            log(f"epoch {epoch + 1}: loss {res.train_loss:.4f} val top-1 per exit "
                f"{' '.join(f'{a:.2f}' for a in acc)} ({res.seconds:.0f}s)")
            results.append(res)
        if world > 1:
            dist.barrier()
    if pool:
        pool.shutdown()
    if world > 1:
        dist.destroy_process_group()
    return results

