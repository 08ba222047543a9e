"""What native code writes to the process's stdout and stderr, captured at the file descriptors.

ONNX Runtime and its providers log through C++ (QNN's reasons for refusing a node, a CUDA
library that does not load) straight to descriptors 1 and 2, where ``sys.stdout``
redirection does not reach: :func:`captured_output` points both descriptors at a temporary
file for the duration of a ``with`` block. The chain reads a provider's refusal this way
(``runtime/chain.py``), ``ranet-edge doctor`` the reason a provider failed.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def captured_output() -> Iterator[list[str]]:
    """Collect what is written to file descriptors 1 and 2 inside the block (native code and
    Python alike); yields a list that holds the text, one string, once the block ends.

    Not thread-safe: the descriptors belong to the process, so output of other threads
    during the block is captured too, and nothing reaches the terminal until it ends.
    """
    out: list[str] = []
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as tmp:
        try:
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)
            yield out
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))
