"""``driver = "ejoin"``: Ejoin / Skyline HTTP JSON gateways (``goip_*.html``) with SIM-bank
slots and eSIM profiles (research/gateways.md sections 1, 7, 10).

Layers, each its own module:

| module | owns |
|---|---|
| ``config`` | the ``[[devices]]`` table |
| ``client`` | HTTP to the box: credentials, timeouts, bounded bodies, failure reasons, redaction |
| ``wire`` | tolerant parsing of status, SMS pages, eSIM lists, command replies |
| ``inventory`` | status -> SimInfo (port/slot/selected/locked/eSIM) and change events |
| ``inbox`` | SMS rows -> parts: content identity, the persisted cursor, long-SMS joining |
| ``rotation`` | SIM-bank rotation order and rental pins (persisted) |
| ``push`` | the optional recv-sms push listener (a poll hint) |
| ``actions`` | AT pass-through (forwarding, USSD) and asynchronous eSIM operations |
| ``driver`` | ``EjoinDriver``: life cycle, loops, health, actions |
| ``probe`` | ``probe(url, username, password)`` for ``vsim-agent probe`` |
"""

from drivers.ejoin.probe import probe

__all__ = ["probe"]
