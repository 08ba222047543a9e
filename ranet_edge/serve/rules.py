"""The exit rule a request asks for: the ``rule`` and ``patience`` parameters, the same on
/v1 (query string), /v2 (request parameters) and gRPC (request parameters)."""
from __future__ import annotations

from typing import Any

from ranet_edge.runtime.decision import RULES

from .api import RequestError

RULE_PARAMETER, PATIENCE_PARAMETER = "rule", "patience"


def parse_rule(rule: Any, patience: Any) -> tuple[str | None, int | None]:
    """(rule, patience) of a request, None where it gives none. ``patience`` may come as a
    string of digits (a query string). Whether they go together (and with the request's
    operating point) is for ``ServedModel.decision_of`` to say.

    Raises:
        RequestError: 400, a rule that is not one of ``RULES``, or a patience that is not a
            whole number >= 1.
    """
    if rule is not None and rule not in RULES:
        raise RequestError(400, f"parameter {RULE_PARAMETER} must be one of {', '.join(RULES)}, got {rule!r}")
    if isinstance(patience, str) and patience.isdigit():
        patience = int(patience)
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
        raise RequestError(400, f"parameter {PATIENCE_PARAMETER} must be a whole number >= 1 (PABEE's t), "
                                f"got {patience!r}")
    return rule, patience
