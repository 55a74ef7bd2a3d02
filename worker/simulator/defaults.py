"""The keys the simulator accepts unless told otherwise (no imports: the CLI reads them for its help)."""

from __future__ import annotations

DEFAULT_CLOUDLAYER_KEY = "cl-sim-key"
DEFAULT_LAYERS_KEY = "lp_sim_key"
DEFAULT_LAYERS_SCOPES = frozenset({"content:read", "jobs:read"})
