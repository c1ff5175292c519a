"""An Ejoin / Skyline ("SK") gateway emulator: the ``goip_*.html`` HTTP JSON API of
research/gateways.md sections 1, 7 and 10, modelled as a box with SIM-bank slots, eSIM
profiles and a network that holds SMS for SIMs that are not receiving.

Modules: :mod:`.model` (the box's state and rules), :mod:`.app` (the gateway wire),
:mod:`.server` (listeners, tick, pushes, control API), ``__main__`` (the standalone process).

Standalone::

    python -m tests.gateways.ejoin --listen 127.0.0.1:8090 --control 127.0.0.1:8091 \\
        --ports 8 --slots 4 --esim-ports 1 --seed 1 [--push-url http://127.0.0.1:9111/sms] \\
        [--username root --password admin] [--max-slot-key max-slot|max-slots] \\
        [--st-style int|text] [--port-style dot|letter] [--register-s 0.2] [--esim-step-s 0.2] \\
        [--model SK-32-4] [--firmware 608-520-840-841-100-0F0]

It prints one JSON line ``{"url": ..., "control": ..., "mac": ..., "ssrc": ...}`` once both
listeners answer, and runs until SIGINT/SIGTERM.  ``--port 0`` style ``:0`` picks free ports.

Control API (JSON, on ``--control``, never faulted, up while the box reboots):

* ``GET  /state``: mac, ssrc, model, firmware, rows, held counts, faults, ports with slots
  (iccid, number, locked, receiving, forward_to) and the active slot.
* ``POST /sms`` ``{"to": ICCID or number, "text": ..., "sender"?: ..., "at"?: epoch,
  "split"?: true}``: the network delivers an SMS (a long text becomes several rows, cut as a
  phone cuts it); answers ``{"result": "stored" | "held", "iccid": ...}``.
* ``POST /report`` ``{"port": n, "slot": m, "recipient"?: ...}``: store a delivery report row.
* ``POST /reboot`` ``{"down_s": 1.0}``: refuse connections for ``down_s``, then a new ssrc
  and a renumbered store.
* ``POST /fault`` / ``GET /fault``: ``{"delay_s": s, "html": bool, "auth": "json" | "401" |
  null, "push_dup": bool, "esim_fail": reason | null, "at_error": text | null}`` (set any
  subset; ``null`` / false / 0 turns one off).
* ``POST /sim`` ``{"port": n, "slot": m, "action": "remove" | "insert", "salt"?: ...}``.
* ``POST /push`` ``{"url": ... | null}``: where the box POSTs ``recv-sms``.
* ``GET  /log``: commands the box received (lock, unlock, switch, AT, eSIM ops, reboots).
"""
