"""What one served model is: its bundle, how it runs and how requests are batched (Ray-free)."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ranet_edge.errors import ConfigError

GRAPHS = ("chain", "monolithic")
_NUMBERS = {"threads": int, "replicas": int, "min_replicas": int, "max_replicas": int,
            "target_ongoing_requests": float, "max_batch": int, "max_body_bytes": int, "batch_wait_ms": float,
            "max_queue": int, "timeout_s": float, "slo_ms": float, "max_length": int}
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass(frozen=True)
class ServeSettings:
    """Settings of one served bundle; ``from_dict`` reads them from a Serve config file's ``args``.

    Raises:
        ConfigError: an unknown ``graph``, or a count, time or flag that is out of range or mistyped.
    """

    bundle: str | None = None  # bundle directory; None: the shipped default bundle
    graph: str = "chain"  # "chain": per-exit graphs, early exit; "monolithic": the whole model per image
    operating_point: str | None = None  # stored point used when a request names none; None: bundle default
    provider: str = "cpu"  # ONNX Runtime execution provider (short or full name)
    threads: int = 1  # intra-op threads per session; also the CPUs Ray reserves per replica
    replicas: int | str = 1  # copies of the model, each in its own process (on any node); "auto": autoscaled
    min_replicas: int = 1  # replicas="auto": Serve's autoscaler keeps between these two counts,
    max_replicas: int = 4  # ... adding replicas while more requests than this are in flight per replica
    target_ongoing_requests: float = 4.0
    max_batch: int = 64  # most images one graph run takes (a request with more is refused)
    batch_wait_ms: float = 5.0  # longest a row waits for company, over all its graphs, from its request's intake
    max_body_bytes: int = 8 * 1024 * 1024  # larger request bodies get 413
    stage_batching: bool = True  # False: each batch runs through all its graphs before the next starts
    max_queue: int = 1024  # images accepted and not yet decided; a request beyond it gets 503
    timeout_s: float = 30.0  # a request not answered this long after it arrived gets 504
    device_io: bool | None = None  # feature maps stay in device memory (None: on for GPU providers)
    slo_ms: float | None = None  # latency objective: requests naming no point move along the ladder (slo.py)
    min_point: str | None = None  # with slo_ms: the cheapest ladder rung used (None: ladder-0)
    max_length: int = 512  # named inputs (text): longest dynamic axis but the batch (a sequence) a request may send

    def __post_init__(self) -> None:
        if self.graph not in GRAPHS:
            raise ConfigError(f"graph {self.graph!r} is not one of {', '.join(GRAPHS)}")
        if self.replicas != "auto" and (not isinstance(self.replicas, int) or isinstance(self.replicas, bool)
                                        or self.replicas < 1):
            raise ConfigError(f"replicas must be a whole number >= 1 or 'auto', got {self.replicas!r}")
        if self.max_replicas < self.min_replicas:
            raise ConfigError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        if isinstance(self.target_ongoing_requests, bool) or not isinstance(self.target_ongoing_requests, (int, float)) \
                or not self.target_ongoing_requests > 0:
            raise ConfigError(f"target_ongoing_requests must be a number > 0, got {self.target_ongoing_requests!r}")
        for field in ("threads", "min_replicas", "max_replicas", "max_batch", "max_body_bytes", "max_queue",
                      "max_length"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{field} must be a whole number >= 1, got {value!r}")
        if not isinstance(self.batch_wait_ms, (int, float)) or not 0 <= self.batch_wait_ms <= 10_000:
            raise ConfigError(f"batch_wait_ms must be a number of milliseconds in [0, 10000], "
                              f"got {self.batch_wait_ms!r}")
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) or not self.timeout_s > 0:
            raise ConfigError(f"timeout_s must be a number of seconds > 0, got {self.timeout_s!r}")
        if not isinstance(self.stage_batching, bool):
            raise ConfigError(f"stage_batching must be true or false, got {self.stage_batching!r}")
        if self.slo_ms is not None and (isinstance(self.slo_ms, bool) or not isinstance(self.slo_ms, (int, float))
                                        or not 0 < self.slo_ms < float("inf")):
            raise ConfigError(f"slo_ms (--slo-ms) must be a number of milliseconds > 0, got {self.slo_ms!r}")
        if self.device_io is not None and not isinstance(self.device_io, bool):
            raise ConfigError(f"device_io must be true, false or unset, got {self.device_io!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ServeSettings:
        """Build from a mapping (dashes or underscores); strings are converted (``max_batch="32"``).

        Raises:
            ConfigError: an unknown key (the message lists the valid ones), a string that is no
                number or boolean where one is due, or a value out of range.
        """
        valid = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in valid:
                raise ConfigError(f"unknown serve setting {key!r}; valid settings: {', '.join(sorted(valid))}")
            if name == "replicas" and isinstance(value, str) and value.strip().lower() == "auto":
                value = "auto"
            elif isinstance(value, str) and name in _NUMBERS:  # `serve run ... max_batch=32` passes strings
                try:
                    value = _NUMBERS[name](value)
                except ValueError:
                    raise ConfigError(f"serve setting {key}={value!r} must be a number") from None
            elif isinstance(value, str) and name in ("stage_batching", "device_io"):
                if value.lower() not in _BOOLS:
                    raise ConfigError(f"serve setting {key}={value!r} must be true or false")
                value = _BOOLS[value.lower()]
            kwargs[name] = value
        return cls(**kwargs)

    @property
    def most_replicas(self) -> int:
        """The most replicas this can run: ``replicas``, or ``max_replicas`` when autoscaled."""
        return self.max_replicas if self.replicas == "auto" else int(self.replicas)

    def to_dict(self) -> dict[str, Any]:
        """Every field by name: what ``from_dict`` reads back (and what a replica is sent)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> ServeSettings:
        """A copy with some fields changed; ``None`` values are ignored (unset CLI options).

        Raises:
            ConfigError: a changed value out of range or mistyped.
        """
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
