"""The ``[[devices]]`` table of ``driver = "goip"``.

```toml
[[devices]]
name = "goip1"
driver = "goip"
listen = "0.0.0.0:44444"           # UDP; the GoIP's "SMS Server" setting points here
lines = [{ id = "goip1-1", password = "secret" }, { id = "goip1-2", password = "secret" }]
```

Line ids and passwords travel inside ``key:value;`` fields and space-separated commands
(research/gateways.md A.2, A.5), so neither may contain ``;`` or whitespace; ids also form the
port name ``<device>/<id>``.  Passwords are :class:`pydantic.SecretStr`: never in a repr or log.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from drivers.base import DriverConfig, split_host_port


class GoipLineConfig(BaseModel):
    """One line (channel) of a GoIP: its authentication id and password (section 2.1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    password: SecretStr

    @field_validator("password")
    @classmethod
    def _password(cls, v: SecretStr) -> SecretStr:
        s = v.get_secret_value()
        if not 1 <= len(s) <= 64 or any(c.isspace() or c == ";" for c in s):
            raise ValueError("1-64 characters, no whitespace and no ';'")
        return v


class GoipConfig(DriverConfig):
    """``[[devices]]`` with ``driver = "goip"``."""

    driver: Literal["goip"] = "goip"
    #: UDP address the GoIP lines send to (its "SMS Server" IP and port).
    listen: str = "0.0.0.0:44444"
    lines: tuple[GoipLineConfig, ...] = Field(min_length=1, max_length=1024)
    #: Wait for a command's reply before re-sending it (A.5: "resend a few times").
    command_timeout_s: float = Field(3.0, gt=0, le=60)
    command_tries: int = Field(3, ge=1, le=10)
    #: A.5: USSD is re-sent once if no answer came within 10 s.
    ussd_timeout_s: float = Field(10.0, gt=0, le=120)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        split_host_port(v)
        return v

    @field_validator("lines")
    @classmethod
    def _unique(cls, v: tuple[GoipLineConfig, ...]) -> tuple[GoipLineConfig, ...]:
        ids = [line.id for line in v]
        if len(set(ids)) != len(ids):
            raise ValueError("a line id is listed twice")
        return v
