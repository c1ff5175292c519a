"""AtConfig: defaults, validation, and the [[devices]] example given to the config author."""

from __future__ import annotations

import tomllib

import pytest
from pydantic import ValidationError

from drivers import resolve
from drivers.at.driver import AtConfig, AtDriver

EXAMPLE = """
# An AT modem pool: one session per port.  Ports: /dev/serial/by-id/... (stable across
# replugs), socket://host:port (ser2net, raw TCP), rfc2217://host:port.
[[devices]]
name = "pool1"
driver = "at"
# One modem: port = "/dev/serial/by-id/usb-Quectel_EC25-if02-port0"; a pool: ports = [...].
# Port names in events are "<name>/<position in ports>", e.g. "pool1/0".
ports = [
  "/dev/serial/by-id/usb-Quectel_Incorporated_EC25_0001-if02-port0",
  "socket://10.0.0.5:4001",
]
baudrate = 115200
# SMS storage read and deleted: "SM" (SIM), "ME" (modem), "MT" (both).
storage = "SM"
# Signal / registration / operator / ICCID check, seconds.
poll_s = 30
# AT+CMGL=4 sweep for SMS whose +CMTI was lost, seconds.
sweep_s = 60
# Timeout of ordinary AT commands, seconds (SIM, list and network commands have longer ones).
command_timeout_s = 5
# +CFUN value for "radio off"; unset = per model (4; Huawei 0).
# radio_off_cfun = 4
# Last rung of the hang ladder: a power-cycle command run by sh; {port} {index} {device}
# are substituted (shell-quoted).
# reset_command = "uhubctl -l 1-1 -p $(( {index} + 1 )) -a cycle"
reset_timeout_s = 60
# Cap on AT+CFUN=1,1 and reset_command runs, per port and hour.
max_resets_per_hour = 4
"""


def test_example_section_is_valid_and_documents_the_defaults() -> None:
    raw = tomllib.loads(EXAMPLE)["devices"][0]
    cfg = resolve(raw["driver"]).config_model.model_validate(raw)
    assert isinstance(cfg, AtConfig)
    assert resolve("at") is AtDriver
    assert cfg.port_list == tuple(raw["ports"])
    defaults = AtConfig(name="x", port="/dev/ttyUSB2")
    for key in ("baudrate", "storage", "poll_s", "sweep_s", "command_timeout_s"):
        assert getattr(cfg, key) == getattr(defaults, key), key
    assert defaults.radio_off_cfun is None and defaults.reset_command is None
    assert (defaults.reset_timeout_s, defaults.max_resets_per_hour) == (60, 4)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, "exactly one"),
        ({"port": "/dev/a", "ports": ["/dev/b"]}, "exactly one"),
        ({"ports": ["/dev/a", "/dev/a"]}, "twice"),
        ({"port": "/dev/a", "storage": "SR"}, "storage"),
        ({"port": "/dev/a", "bogus": 1}, "bogus"),
        ({"port": "/dev/a", "poll_s": 0}, "poll_s"),
        ({"port": "/dev/a", "driver": "simulated"}, "driver"),
    ],
)
def test_bad_configs_name_the_problem(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AtConfig.model_validate({"name": "p", "driver": "at", **extra})
