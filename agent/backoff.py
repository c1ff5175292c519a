"""Capped exponential backoff with full jitter (DESIGN.md invariant 5: nothing spins).

Full jitter (sleep uniformly in ``[0, min(cap, base * 2**n)]``) spreads the retries of many
agents hitting one recovering hub; ``floor`` keeps a lower bound so a failing loop can never
busy-spin even when the draw is near zero.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(
        self,
        base: float = 1.0,
        cap: float = 300.0,
        floor: float = 0.05,
        rng: random.Random | None = None,
    ) -> None:
        self.base = base
        self.cap = cap
        self.floor = floor
        self.failures = 0
        self._rng = rng or random.Random()

    def next(self, retry_after: float | None = None) -> float:
        """The delay before the next attempt; honours a server's ``Retry-After`` (capped)."""
        ceiling = min(self.cap, self.base * (2 ** min(self.failures, 30)))
        self.failures += 1
        delay = max(self.floor, self._rng.uniform(0, ceiling))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap))
        return delay

    def reset(self) -> None:
        self.failures = 0
