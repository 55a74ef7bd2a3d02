"""The ``Simulator`` helpers for whole accounts (mirror mode), for tests in the simulator's event loop.

Each one does exactly what its control route does (``control_accounts``), through the same
``SimulatorState`` method. Kept apart from ``app`` so the accounts' surface reads in one place.
"""

from __future__ import annotations

from worker.simulator.cloudlayer_account import DEFAULT_BULK_SIZE
from worker.simulator.cloudlayer_jobs import SimJob
from worker.simulator.layers_content import LayersContainer
from worker.simulator.state import SimulatorState

__all__ = ["AccountHelpers"]


class AccountHelpers:
    """Mixed into ``Simulator``, which provides ``state``."""

    __slots__ = ()
    state: SimulatorState

    # -- cloudlayer ---------------------------------------------------------------------------------

    def add_cloudlayer_assets(self, count: int, **spec: object) -> list[SimJob]:
        """``count`` succeeded assets, oldest first, as ``POST /_sim/cloudlayer/assets`` (``size``,
        ``ext``, ``start_age_s``: the oldest's age, default ``count * spacing_s``; ``spacing_s``: default
        60; ``url_ttl_s``, ``timestamp_style``); raises ``SpecError``."""
        return self.state.add_cloudlayer_assets({"count": count, **spec})

    def cloudlayer_assets(self) -> list[SimJob]:
        """The jobs of every asset alive now, newest first (``asset_id``, ``seed``, ``size``, ...)."""
        return self.state.cloudlayer_assets()

    def cloudlayer_asset_ids(self) -> list[str]:
        """The ids of every asset alive now, newest first: exactly what a full list walk would see."""
        return [job.asset_id for job in self.state.cloudlayer_assets()]

    def expired_cloudlayer_asset_ids(self) -> list[str]:
        """The ids of every asset that existed and is gone now (expired or past retention), in that order."""
        state = self.state
        return [job.asset_id for job in state.cloudlayer_account.expired(state.cloudlayer, state.clock())]

    def expire_cloudlayer_assets(
        self, oldest: int = 0, *, newest: int = 0, random: int = 0, ids: list[str] | None = None
    ) -> list[str]:
        """Expire now the ``oldest`` N alive assets (as retention does), the ``newest`` N, ``random`` N
        (seeded), or these ``ids``: one of them. Returns the ids expired."""
        spec: dict[str, object] = {
            k: n for k, n in (("oldest", oldest), ("newest", newest), ("random", random)) if n
        }
        if ids is not None:
            spec["ids"] = list(ids)
        return self.state.expire_cloudlayer_assets(spec)

    def set_cloudlayer_churn(
        self,
        add: int = 0,
        expire: int = 0,
        *,
        expire_where: str = "oldest",
        every: int = 1,
        size: int = DEFAULT_BULK_SIZE,
    ) -> None:
        """Every ``every``-th list request first expires ``expire`` assets (``expire_where``: "oldest",
        "newest" or "random"), then adds ``add`` at the head; ``set_cloudlayer_churn()`` stops it."""
        spec = {
            "add_per_list": add,
            "expire_per_list": expire,
            "expire_where": expire_where,
            "every": every,
            "size": size,
        }
        self.state.set_cloudlayer_churn(spec)

    def set_cloudlayer_retention(self, retention_s: float | None) -> None:
        """Assets vanish ``retention_s`` after creation (None: never), from the list, the asset route and
        the file host."""
        self.state.set_cloudlayer_retention({"retention_s": retention_s})

    # -- Layers -------------------------------------------------------------------------------------

    def add_layers_containers(self, project_id: str, count: int, **spec: object) -> list[LayersContainer]:
        """``count`` containers of the project, oldest first, as ``POST
        /_sim/layers/projects/:projectId/containers`` (``status``: one or a list cycled over them,
        ``format``, ``size``, ``slides``, ``start_age_s``, ``spacing_s``, ``container``: more container
        spec fields); raises ``SpecError``."""
        return self.state.add_layers_containers(project_id, {"count": count, **spec})

    def layers_container_ids(self, project_id: str) -> list[str]:
        """Every container id of the project (any status), newest first."""
        return [container.id for container in self.state.layers_project_containers(project_id)]

    def forbid_layers_project(self, project_id: str, key: str | None = None) -> None:
        """The project's list answers ``key`` (None: every key) 403 ``FORBIDDEN_SCOPE``."""
        self.state.forbid_layers_project(project_id, {"key": key})

    def allow_layers_project(self, project_id: str) -> None:
        """Lift every refusal on the project."""
        self.state.layers_account.allow(project_id)

    def set_layers_churn(self, project_id: str, add: int = 0, *, every: int = 1) -> None:
        """Every ``every``-th list request of the project first adds ``add`` completed containers at the
        head; ``add=0`` stops it."""
        self.state.set_layers_churn(project_id, {"add_per_list": add, "every": every})
