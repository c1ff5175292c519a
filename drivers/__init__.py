"""Driver registry: driver names resolved lazily to classes, as uvicorn resolves its loops.

``driver = "simulated"`` in a ``[[devices]]`` table names an entry of :data:`DRIVERS`; any
``"package.module:Class"`` string loads an out-of-tree driver, which must subclass
:class:`drivers.base.Driver`.  Importing a driver only when a config names it keeps start-up
cheap and lets a broken optional driver fail only the configs that use it.
"""

from __future__ import annotations

import importlib

from drivers.base import Driver

DRIVERS: dict[str, str] = {
    "simulated": "drivers.simulated:SimulatedDriver",
    "at": "drivers.at.driver:AtDriver",
    "ejoin": "drivers.ejoin.driver:EjoinDriver",
    "goip": "drivers.goip.driver:GoipDriver",
}


class UnknownDriverError(LookupError):
    pass


def resolve(name: str) -> type[Driver]:
    """The driver class for a registry name or a ``module:Class`` import string."""
    target = DRIVERS.get(name, name)
    if ":" not in target:
        known = ", ".join(sorted(DRIVERS))
        raise UnknownDriverError(f"unknown driver {name!r} (known: {known}, or 'module:Class')")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise UnknownDriverError(f"cannot load driver {name!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise UnknownDriverError(f"driver {name!r} does not name a Driver subclass")
    return cls
