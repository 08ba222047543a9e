"""Export RANet and MSDNet checkpoints: checkpoint loading plus the generic exporter."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ranet_edge.architectures import NAMES, ArchConfig
from ranet_edge.checkpoint import LoadedCheckpoint, load_checkpoint
from ranet_edge.runtime.preprocess import PreprocessSpec

from .exporter import INPUT_NAME, ExportResult, ExportSpec, export_model


def export_loaded(loaded: LoadedCheckpoint, out_dir: str | os.PathLike, spec: ExportSpec,
                  source: str = "", force: bool = False, log: Callable[[str], None] | None = None) -> ExportResult:
    """Export a checkpoint already loaded: the manifest records its architecture, official
    flags, where the flags came from, the checkpoint's file name (``source``) and layout, the
    class names it stores, and the data set's preprocessing; the model's official per-exit
    FLOP counts are checked against the cut graphs (see :func:`.exporter.export_model`).

    Raises:
        ExportError: as :func:`.exporter.export_model` (a non-empty ``out_dir`` without
            ``force``, FLOPs that do not fit the model's count).
        ValidationError: an exit differs from PyTorch by more than ``spec.tolerance``.
    """
    model, config = loaded.model, loaded.config
    costs = model.exit_costs()
    pre = PreprocessSpec.for_dataset(config.data).to_dict()
    batch = spec.batch_size
    pre.update({"input": INPUT_NAME, "shape": [batch, 3, config.image_size, config.image_size]})
    classes = loaded.meta.get("classes")
    metadata = {
        "model": {"architecture": NAMES[config.arch], "config": config.to_dict(),
                  "official_flags": config.official_flags(), "config_source": loaded.config_source,
                  "checkpoint": Path(source).name if source else None, "checkpoint_layout": loaded.layout},
        "num_classes": config.num_classes,
        "class_names": list(classes) if classes and len(classes) == config.num_classes else None,
        "preprocessing": pre,
    }
    # Sub-networks are a RANet notion; an MSDNet exports one graph per exit only.
    exit_groups = ([spec_.subnet for spec_ in config.plan() if spec_.exit is not None]
                   if config.arch == "ranet" else None)
    return export_model(
        model, out_dir, (3, config.image_size, config.image_size), spec,
        exit_groups=exit_groups, cumulative_params=[c.params for c in costs],
        reference_flops=[c.flops for c in costs], reference_dead_flops=[c.dead_flops for c in costs],
        metadata=metadata, force=force, log=log,
    )


def export_checkpoint(ckpt: str | os.PathLike, out_dir: str | os.PathLike, spec: ExportSpec | None = None,
                      config: ArchConfig | None = None, config_source: str = "flags", force: bool = False,
                      log: Callable[[str], None] | None = None, arch: str | None = None) -> ExportResult:
    """Load ``ckpt`` (any supported layout; architecture inferred when ``config`` is None,
    as ``arch`` if given) and export it (:func:`export_loaded`).

    Raises:
        CheckpointError: ``ckpt`` is not a readable checkpoint, holds objects only a full
            unpickle could build, or does not match ``config`` (or no architecture can be
            inferred from it).
        ConfigError: ``config`` describes an architecture whose forward cannot run.
        MissingExtraError: torch is not installed (the ``export`` extra).
        ExportError: as :func:`export_loaded`.
        ValidationError: an exit differs from PyTorch by more than ``spec.tolerance``.
    """
    loaded = load_checkpoint(ckpt, config, config_source, arch)
    return export_loaded(loaded, out_dir, spec or ExportSpec(), str(ckpt), force, log)
