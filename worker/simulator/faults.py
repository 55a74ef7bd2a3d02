"""Fault rules and their matching (pure: no I/O; the middleware and the file host apply them).

A rule targets a route (``"cloudlayer.job"``, ``"cloudlayer.asset"``, ``"cloudlayer.convert"``, ``"files"``,
a family such as ``"cloudlayer.*"``, or ``"*"``), optionally only requests whose path contains ``match``. It
fires either for the next ``count`` matching requests or, with ``probability``, forever (drawn from a
per-rule seeded RNG so a run is reproducible) until the rules are cleared. Rules are tried in the order they
were added; the first one that fires wins, so one request suffers at most one fault. ``after`` lets the
first N matching requests through untouched (e.g. to fail the third page of a list walk).
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from worker.simulator.specs import SpecError, SpecReader

__all__ = [
    "FILE_HOST_ROUTES",
    "FILE_KINDS",
    "GENERIC_KINDS",
    "KINDS",
    "FaultBook",
    "FaultRule",
    "parse_fault_rule",
]

# Kinds any route can suffer: they happen before the handler runs ("malformed" instead of it: a 200 whose
# body is not the documented shape, e.g. an object where a list answers an array).
GENERIC_KINDS = ("status", "reset", "stall", "malformed")
# Kinds that only make sense where a file body is served.
FILE_KINDS = ("truncate", "wrong_bytes", "short_body", "expired", "replaced", "stall_body", "reset_body")
KINDS = GENERIC_KINDS + FILE_KINDS
# Routes that serve file bodies; the only ones file-only kinds can target (besides the "*" wildcard).
FILE_HOST_ROUTES = frozenset({"files"})
# What "malformed" answers unless the rule gives a body: valid JSON, but neither an array nor {items, ...}.
DEFAULT_MALFORMED_BODY = '{"unexpected": "shape"}'


@dataclass(slots=True, kw_only=True)
class FaultRule:
    """One fault; mutable only in ``remaining`` and ``fired``, which the book updates as it fires."""

    id: str
    route: str
    kind: str
    match: str | None = None
    remaining: int | None = 1  # None for probability rules
    probability: float | None = None
    seed: int = 0
    status: int = 503
    retry_after: str | None = None
    delay_s: float = 1.0
    missing_bytes: int = 1024
    style: str = "403"
    message: str | None = None
    after: int = 0  # matching requests still to let through before the rule may fire
    body: str | None = None  # "malformed": the exact body text (None: the default one)
    fired: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def targets(self, route: str) -> bool:
        """Whether the rule's route pattern covers the concrete route name."""
        if self.route in ("*", route):
            return True
        return self.route.endswith(".*") and route.startswith(self.route[:-1])

    def to_json(self) -> dict[str, object]:
        """The rule as the control API shows it."""
        return {
            "id": self.id,
            "route": self.route,
            "kind": self.kind,
            "match": self.match,
            "remaining": self.remaining,
            "probability": self.probability,
            "seed": self.seed,
            "status": self.status,
            "retry_after": self.retry_after,
            "delay_s": self.delay_s,
            "missing_bytes": self.missing_bytes,
            "style": self.style,
            "message": self.message,
            "after": self.after,
            "body": self.body,
            "fired": self.fired,
        }

    @property
    def malformed_body(self) -> str:
        """The body a "malformed" fault answers with."""
        return DEFAULT_MALFORMED_BODY if self.body is None else self.body

    def _draw(self) -> bool:
        """Decide whether this matching request is hit, consuming count or randomness."""
        if self.after > 0:
            self.after -= 1
            return False
        if self.probability is not None:
            return self._rng.random() < self.probability
        assert self.remaining is not None  # invariant: count rules always carry a count
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


def _retry_after(raw: object) -> str | None:
    """``retry_after`` accepts "3", 3, 2.5 or "http-date:3"; normalised to the string form."""
    if raw is None:
        return None
    problem = SpecError(f"fault rule: 'retry_after' must be seconds or 'http-date:N', got {raw!r}")
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise problem
    text = str(raw)
    try:
        seconds = float(text.removeprefix("http-date:"))
    except ValueError:
        raise problem from None
    if not math.isfinite(seconds) or seconds < 0:
        raise problem
    return text


def _malformed_body(reader: SpecReader) -> str | None:
    """``text`` (sent as is, e.g. broken JSON or HTML) or ``body`` (any JSON value, even null); None when
    neither is given."""
    text = reader.opt_text("text")
    if reader.has("body"):
        if text is not None:
            raise SpecError("fault rule: give either 'body' or 'text', not both")
        return json.dumps(reader.opt_raw("body"))
    return text


def parse_fault_rule(raw: Mapping[str, object], rule_id: str) -> FaultRule:
    """Validate a rule spec (from JSON or keyword arguments); raises ``SpecError``."""
    reader = SpecReader(raw, "fault rule")
    kind = reader.choice("kind", KINDS, "")
    route = reader.text("route", "*")
    if kind in FILE_KINDS and route != "*" and route not in FILE_HOST_ROUTES:
        raise SpecError(f"fault rule: kind {kind!r} only applies to route 'files' (or '*'), not {route!r}")
    probability = reader.opt_number("probability", None)
    count = reader.opt_integer("count", minimum=1)
    if probability is not None and count is not None:
        raise SpecError("fault rule: give either 'count' or 'probability', not both")
    if probability is not None and probability > 1:
        raise SpecError(f"fault rule: 'probability' must be within [0, 1], got {probability}")
    rule = FaultRule(
        id=rule_id,
        route=route,
        kind=kind,
        match=reader.opt_text("match"),
        remaining=None if probability is not None else (count or 1),
        probability=probability,
        seed=reader.integer("seed", 0),
        status=reader.integer("status", 503, minimum=400),
        retry_after=_retry_after(reader.opt_raw("retry_after")),
        delay_s=reader.number("delay_s", 1.0),
        missing_bytes=reader.integer("missing_bytes", 1024, minimum=1),
        style=reader.choice("style", ("403", "410"), "403"),
        message=reader.opt_text("message"),
        after=reader.integer("after", 0, minimum=0),
        body=_malformed_body(reader),
    )
    reader.finish()
    if rule.kind != "malformed" and rule.body is not None:
        raise SpecError("fault rule: 'body' and 'text' apply to kind 'malformed' only")
    if rule.status > 599:
        raise SpecError(f"fault rule: 'status' must be within [400, 599], got {rule.status}")
    return rule


class FaultBook:
    """The active rules, in insertion order."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._ids = itertools.count(1)

    def add(self, raw: Mapping[str, object]) -> FaultRule:
        """Validate and activate a rule; raises ``SpecError``."""
        rule = parse_fault_rule(raw, f"fault_{next(self._ids)}")
        self._rules.append(rule)
        return rule

    def remove(self, rule_id: str) -> bool:
        """Drop one rule; False when it is unknown (or already used up)."""
        before = len(self._rules)
        self._rules = [rule for rule in self._rules if rule.id != rule_id]
        return len(self._rules) != before

    def clear(self) -> int:
        """Drop every rule; returns how many were active."""
        dropped = len(self._rules)
        self._rules.clear()
        return dropped

    def rules(self) -> list[FaultRule]:
        """The active rules (the objects themselves, so tests can read ``fired``)."""
        return list(self._rules)

    def pick(self, route: str, paths: tuple[str, ...], *, file_host: bool) -> FaultRule | None:
        """The rule that hits this request, if any. ``paths`` holds the decoded and raw forms of the path so a
        ``match`` written either way (e.g. a hostile asset id) finds it. File-only kinds never hit API routes,
        and do not consume their count there."""
        for rule in self._rules:
            if not rule.targets(route):
                continue
            if rule.kind in FILE_KINDS and not file_host:
                continue
            if rule.match is not None and not any(rule.match in path for path in paths):
                continue
            if rule._draw():
                rule.fired += 1
                if rule.remaining == 0:
                    self._rules.remove(rule)
                return rule
        return None
