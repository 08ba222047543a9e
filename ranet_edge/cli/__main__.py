"""`python -m ranet_edge.cli ...`: the CLI without the console script (e.g. under torchrun)."""
from __future__ import annotations

from . import main

if __name__ == "__main__":  # pragma: no cover
    main()
