"""The reference hub: the server side of PROTOCOL.md §3 to §6, for tests, benchmarks and the demo.

It owns nothing of the agent: it is what the agent talks to.  In memory only, one process.

* :mod:`~agent.hub.config`: :class:`HubConfig`, the settings.
* :mod:`~agent.hub.state`: :class:`HubState`, the model (SIMs, messages, commands, requests),
  shared by the handlers and by tests in the same process.
* :mod:`~agent.hub.validate`: hand-written shape checks of agent bodies (hot path).
* :mod:`~agent.hub.agent_api`: ``/agent/v1`` (§1 to §5); :mod:`~agent.hub.middleware`: its
  request log and fault injection; :mod:`~agent.hub.faults`: fault specs.
* :mod:`~agent.hub.customer_api` and :mod:`~agent.hub.rentals`: ``/api/<method>/<key>`` (§6).
* :mod:`~agent.hub.control`: ``/_control/`` endpoints for tests.
* :mod:`~agent.hub.server`: :func:`create_app` and :func:`run_hub`.

Typical test use::

    state = HubState()
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_hub(HubConfig(), "127.0.0.1", 0, state=state,
                                       ready=ready, shutdown=stop))
    await ready.wait()
    upstream = f"{state.base_url}/agent/v1"
"""

from agent.hub.config import HubConfig
from agent.hub.server import create_app, run_hub
from agent.hub.state import HubState

__all__ = ["HubConfig", "HubState", "create_app", "run_hub"]
