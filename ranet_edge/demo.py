"""The checkpoint `ranet-edge demo` starts from (needs torch only when none is shipped)."""
from __future__ import annotations

from pathlib import Path


def demo_checkpoint(work: Path) -> tuple[Path, bool]:
    """(checkpoint, trained): the shipped default model, or, in an install without it, a
    'tiny' RANet with random weights written to ``work``.

    Raises:
        ModuleNotFoundError: no checkpoint is shipped and torch is not installed.
    """
    from .assets import DEFAULT_CHECKPOINT

    if DEFAULT_CHECKPOINT.exists():
        return DEFAULT_CHECKPOINT, True
    import torch

    from .checkpoint import FORMAT
    from .model import RANet
    from .presets import get_preset

    torch.manual_seed(0)
    cfg = get_preset("tiny")
    ckpt = work / "tiny-untrained.pt"
    torch.save({"format": FORMAT, "config": cfg.to_dict(), "model": RANet(cfg).state_dict()}, ckpt)
    return ckpt, False
