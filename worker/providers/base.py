"""The provider contract: how one vendor's jobs are polled and their files resolved, and the spec a
provider module exports so the registry (``worker.providers``) can configure, validate and build it.

The engine owns no vendor rule: a provider says how often its jobs are polled, when polling gives
up, and how long before a published expiry its URLs are refreshed (its ``Schedule``); the engine
applies that.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

from worker.envvars import PREFIX, Var, multiplier, positive_float, section
from worker.errors import ConfigError
from worker.models import AssetRef, Job, JobKey, PollOutcome
from worker.policy import Backoff

if TYPE_CHECKING:  # the client (aiohttp) is loaded only by a worker that builds providers
    from worker.httpclient import HttpClient


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """When a provider's jobs are polled, when polling gives up, and when its URLs are refreshed.

    Poll ``n`` of a job waits ``backoff.delay(n)``; a job still pending ``deadline_s`` after it
    started polling fails with ``poll_timeout``; a URL whose published expiry is less than
    ``expiry_margin_s`` away is refreshed before it is fetched.
    """

    initial_s: float = 2.0
    max_s: float = 30.0
    multiplier: float = 2.0
    deadline_s: float = 1800.0
    expiry_margin_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_s < self.initial_s:
            raise ConfigError(
                f"a poll schedule's max ({self.max_s} s) must be >= its initial delay ({self.initial_s} s)"
            )

    @property
    def backoff(self) -> Backoff:
        return Backoff(initial_s=self.initial_s, max_s=self.max_s, multiplier=self.multiplier)


# The schedule's variables: ASSET_WORKER_POLL_<X> for every provider, ASSET_WORKER_<NAME>_<X> for one.
_SCHEDULE_FIELDS: tuple[tuple[str, str, Callable[[str], Any]], ...] = (
    ("POLL_INITIAL_S", "initial_s", positive_float),
    ("POLL_MAX_S", "max_s", positive_float),
    ("POLL_MULTIPLIER", "multiplier", multiplier),
    ("POLL_DEADLINE_S", "deadline_s", positive_float),
    ("EXPIRY_MARGIN_S", "expiry_margin_s", positive_float),
)
SHARED_SCHEDULE_VARIABLES: tuple[Var, ...] = tuple(
    Var(PREFIX + suffix, attr, parse)
    for suffix, attr, parse in _SCHEDULE_FIELDS
    if suffix.startswith("POLL_")
)


def schedule_variables(name: str) -> tuple[Var, ...]:
    """``ASSET_WORKER_<NAME>_POLL_INITIAL_S`` and the rest, for the provider called ``name``."""
    own = f"{PREFIX}{name.upper()}_"
    return tuple(Var(own + suffix, attr, parse) for suffix, attr, parse in _SCHEDULE_FIELDS)


def load_schedule(name: str, default: Schedule, env: Mapping[str, str]) -> Schedule:
    """The provider's schedule: its own variables over the shared ones over its defaults."""
    shared = section(env, SHARED_SCHEDULE_VARIABLES)
    own = section(env, schedule_variables(name))
    try:
        return Schedule(**{**_fields(default), **shared, **own})
    except ConfigError as exc:
        own_prefix = f"{PREFIX}{name.upper()}_"
        raise ConfigError(
            f"{name}: {exc.message} (set by {PREFIX}POLL_MAX_S / {own_prefix}POLL_MAX_S and "
            f"{PREFIX}POLL_INITIAL_S / {own_prefix}POLL_INITIAL_S)"
        ) from None


def _fields(schedule: Schedule) -> dict[str, float]:
    return {attr: getattr(schedule, attr) for _, attr, _ in _SCHEDULE_FIELDS}


class Provider(Protocol):
    name: str

    @property
    def schedule(self) -> Schedule: ...

    async def poll(self, job: Job) -> PollOutcome:
        """Ask the vendor once where the job stands; resolve its assets when it is finished.

        Raises ``UpstreamRejected`` (permanent, the job fails with its code) or
        ``UpstreamUnavailable`` (already retried at request level; the job is polled again later).
        """
        ...

    async def refresh(self, job: Job, ref: AssetRef) -> AssetRef:
        """A fresh source for an asset whose URL stopped working or is about to expire.

        Raises ``AssetSetChanged`` when the asset is no longer part of the job's file set.
        """
        ...

    def folder(self, job: Job) -> str:
        """The ``{job}`` part of destination keys: the upstream id files are grouped under."""
        ...


@dataclass(frozen=True, slots=True)
class Listed:
    """One item of a vendor's account listing, as the job that keeps a copy of it.

    ``key`` is the same for the same item on every walk, in every replica (so the store's dedupe
    means it is never fetched twice); ``created_at`` (UNIX seconds) when the vendor says; ``assets``
    when the listing already names the files (the job then needs no poll: it is created ready to
    download), empty when the job must be polled for them.
    """

    key: JobKey
    item_id: str
    created_at: float | None = None
    assets: tuple[AssetRef, ...] = ()
    # Other jobs that copy the same files (cloudlayer: the asset's own job, submitted by its job
    # id): when one of them exists, the item needs no job of its own.
    aliases: tuple[JobKey, ...] = ()


@dataclass(frozen=True, slots=True)
class ListPage:
    """A page of a listing walk; ``resume`` is where a walk interrupted after this page starts
    again (saved with the walk), None after the last page."""

    items: tuple[Listed, ...]
    resume: str | None


@runtime_checkable
class Lister(Protocol):
    """A provider that can list what an account holds (mirror mode); its spec's ``mirror_scope``
    says which scopes it lists."""

    def walk(self, scope: str, *, start: str | None, since: float | None) -> AsyncIterator[ListPage]:
        """Pages of the listing, newest first, from ``start`` (a page's ``resume``; None: the top).
        ``since`` (UNIX seconds): only items created since then are wanted; a lister may stop, or
        filter, at that point. Raises ``UpstreamRejected`` (a scope the key cannot read: its code;
        an answer not of the documented shape: ``malformed_response``) or ``UpstreamUnavailable``."""
        ...


@dataclass(frozen=True, slots=True)
class ProviderContext:
    """What the worker hands a provider it builds: an API client of its own over the shared session
    (its retries are counted under its name, its answers bounded by the response limit)."""

    http: HttpClient


S = TypeVar("S")

# The ids JobKey.parse accepts, as a JSON Schema (ECMA 262) pattern; lone surrogates, which it also
# refuses, cannot be written in one.
ANY_ID_PATTERN = r"[^\s\x00-\x1f\x7f-\x9f]{1,256}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderSpec(Generic[S]):
    """Everything the worker needs to know about a provider, exported by its module as ``SPEC``.

    ``S`` is the provider's own settings type, loaded by ``load`` from ``variables``.
    """

    name: str  # the key prefix: jobs are "<name>:<upstream id>"
    key_example: str  # shown in help and errors, e.g. "cloudlayer:<jobId>"
    variables: tuple[Var, ...]  # its own settings (API key, base URL...); the schedule's are added
    load: Callable[[Mapping[str, str]], S]  # its settings from the environment; raises ConfigError
    schedule: Schedule  # its default schedule
    check_id: Callable[[str], None]  # refuses an upstream id that cannot be one of its (InvalidJob)
    build: Callable[[ProviderContext, S, Schedule], Provider]
    secrets: Callable[[S], tuple[str | None, ...]]  # values to mask wherever text leaves the process
    # The ids check_id accepts, as a pattern for the HTTP API's document (a schema-driven client
    # then sends no key the API refuses); ids are also 1-256 characters JobKey.parse accepts.
    id_pattern: str = ANY_ID_PATTERN
    # The variable a user must set before this provider can work at all (its API key), when it is
    # not set; None when it is ready. A worker leaves such a provider's jobs queued for one that can.
    missing: Callable[[S], str | None] = field(default=lambda _s: None)
    # Mirror mode: refuses (ConfigError) a scope the provider cannot list ("" is the whole account,
    # "prj_..." a Layers project); None when the provider cannot list at all. Its provider is a
    # Lister when this is set.
    mirror_scope: Callable[[str], None] | None = None
    # A source as a user writes it, for help and errors ("layers:PROJECT_ID").
    mirror_example: str = ""
    # Advice worth a warning at start (a schedule faster than the vendor allows): (event, fields).
    advice: Callable[[S, Schedule], tuple[tuple[str, dict[str, object]], ...]] = field(
        default=lambda _s, _sch: ()
    )

    @property
    def all_variables(self) -> tuple[Var, ...]:
        return (*self.variables, *schedule_variables(self.name))


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """A provider's settings as the worker runs it: its own and its schedule."""

    options: Any
    schedule: Schedule
