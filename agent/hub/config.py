"""The reference hub's settings: who may talk to it and how long it waits.

Owns only the plain configuration record; it reads no files and no environment (the CLI builds
a :class:`HubConfig` from its flags).
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _default_agent_keys() -> set[str]:
    return {"demo-key"}


@dataclass
class HubConfig:
    """Settings of one reference hub.

    ``agent_keys``: the accepted agent API keys (``Authorization: Bearer <key>``).  A ``set``
    accepts any ``X-Agent-Id`` with any listed key.  A ``dict`` maps each *key* to the one agent
    id allowed to use it (``{"k-farm-3": "farm-3"}``); a request whose ``X-Agent-Id`` differs is
    refused like a wrong key.  ``key in agent_keys`` means "accepted" for both shapes.

    ``signing_secret``: when set, every agent request must carry a valid ``X-Signature`` /
    ``X-Timestamp`` pair (PROTOCOL.md §1), within ``max_skew_s`` of the hub clock.

    ``redeliver_after_s``: a delivered command with no result yet is delivered again on a poll
    that comes at least this long after the last delivery (at-least-once, PROTOCOL.md §5).

    ``control``: serve the ``/_control/`` test endpoints.  Never expose such a hub publicly.
    """

    agent_keys: dict[str, str] | set[str] = field(default_factory=_default_agent_keys)
    customer_key: str = "customer-key"
    signing_secret: str | None = None
    long_poll_max_s: float = 25.0
    control: bool = True
    redeliver_after_s: float = 30.0
    max_skew_s: float = 300.0
    graceful_shutdown_s: int = 2
