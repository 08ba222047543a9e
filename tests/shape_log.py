"""Test helper: the distinct input shapes each graph session of a chain received, recorded at
the ONNX Runtime call itself (``run`` and ``run_with_iobinding``), not derived from the policy.

``ShapeLog.attach(chain)`` wraps the chain's graph sessions; ``detach`` restores them. It patches
a chain's sessions, so it lives with the tests (and the GPU benchmarks, which import it from here).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ShapeLog:
    """Distinct input shapes each graph session of a chain received (see the module doc)."""

    shapes: list[set[tuple]] = field(default_factory=list)
    _originals: list = field(default_factory=list)

    @classmethod
    def attach(cls, chain) -> ShapeLog:
        log = cls()
        for i, g in enumerate(chain.graphs):
            log.shapes.append(set())
            log._originals.append(g.session)
            g.session = _CountingSession(g.session, log.shapes[i])
        chain.executor.reset()  # pre-bound plans hold bindings of the old sessions
        return log

    def detach(self, chain) -> None:
        for g, sess in zip(chain.graphs, self._originals):
            g.session = sess
        chain.executor.reset()

    def distinct(self) -> list[int]:
        """Per graph, how many distinct sets of input shapes it ran with."""
        return [len(s) for s in self.shapes]

    def batch_sizes(self) -> list[list[int]]:
        """Per graph, the batch sizes it ran at, sorted."""
        return [sorted({b for shape in s for b in _batch_dims(shape) if b is not None}) for s in self.shapes]


class _CountingBinding:
    def __init__(self, binding, session):
        self._b, self._session = binding, session
        self.inputs: dict[str, tuple] = {}

    def bind_ortvalue_input(self, name, value):
        self.inputs[name] = tuple(value.shape())
        return self._b.bind_ortvalue_input(name, value)

    def bind_cpu_input(self, name, array):
        self.inputs[name] = tuple(array.shape)
        return self._b.bind_cpu_input(name, array)

    def __getattr__(self, name):
        return getattr(self._b, name)


class _CountingSession:
    def __init__(self, session, seen: set):
        self._s, self._seen = session, seen

    def run(self, output_names, feeds, *args, **kw):
        self._seen.add(tuple(tuple(feeds[k].shape) for k in sorted(feeds)))
        return self._s.run(output_names, feeds, *args, **kw)

    def io_binding(self):
        return _CountingBinding(self._s.io_binding(), self)

    def run_with_iobinding(self, binding, *args, **kw):
        self._seen.add(tuple(binding.inputs[k] for k in sorted(binding.inputs)))
        return self._s.run_with_iobinding(binding._b, *args, **kw)

    def __getattr__(self, name):
        return getattr(self._s, name)
def _batch_dims(shapes) -> tuple:
    return tuple(s[0] if len(s) else None for s in shapes)

