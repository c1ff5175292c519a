"""The ``[[devices]]`` table of ``driver = "ejoin"`` (validated at config load)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from drivers.base import DriverConfig, DriverError, split_host_port


class EjoinConfig(DriverConfig):
    """One Ejoin / Skyline gateway."""

    driver: Literal["ejoin"] = "ejoin"
    url: str  # the gateway's web address, e.g. "http://192.168.1.50" (or ":8789")
    username: str = "root"
    password: SecretStr | None = None
    password_file: Path | None = None
    poll_s: float = Field(2.0, gt=0, le=3600)  # goip_get_sms cursor poll
    status_s: float = Field(10.0, gt=0, le=3600)  # goip_get_status poll
    #: Our listener for the box's recv-sms pushes ("HOST:PORT", any path); only a poll hint.
    push_listen: str | None = None
    rotate_s: float = Field(0.0, ge=0)  # SIM-bank rotation dwell per SIM; 0 = off
    #: Rows of one sender to one SIM within this many seconds, cut as parts of a long SMS, are
    #: joined (drivers/ejoin/inbox.py).
    join_s: float = Field(30.0, ge=0, le=3600)
    timeout_s: float = Field(10.0, gt=0, le=120)  # per HTTP request to the box

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// address of the gateway")
        if parts.username or parts.password or parts.query:
            raise ValueError("put credentials in 'username'/'password', not in the URL")
        return value.rstrip("/")

    @field_validator("push_listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value)
        return value

    @model_validator(mode="after")
    def _one_password(self) -> EjoinConfig:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("set exactly one of 'password' or 'password_file'")
        return self

    def password_value(self) -> str:
        """The password (read from ``password_file`` at each connect, so a rotated file is
        picked up); raises :class:`DriverError` without echoing any content."""
        if self.password is not None:
            return self.password.get_secret_value()
        assert self.password_file is not None
        try:
            return self.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise DriverError(f"cannot read password_file: {exc.strerror}") from None
