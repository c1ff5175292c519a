"""What one running hub app shares between its handlers: config, state and the stop signal.

Owns the "we are shutting down" flag, so that long-polls and held (faulted) requests end at
once when :func:`agent.hub.run_hub` stops instead of holding uvicorn's graceful shutdown open.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from agent.hub.config import HubConfig
from agent.hub.state import HubState

AGENT_PREFIX = "/agent/v1"


@dataclass
class Runtime:
    config: HubConfig
    state: HubState
    stopping: bool = False
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        """End every long-poll and held request; call on the server's loop."""
        self.stopping = True
        self._stopped.set()
        self.state.wake_all()

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` or until :meth:`stop`, whichever comes first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), seconds)
