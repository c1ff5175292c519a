"""Configuration: TOML file + ``VSIM_…`` environment overrides + secrets from files.

Owns parsing and validation only; nothing here opens devices or sockets.

* Unknown keys, wrong types and duplicate device names are errors.  Every error names the file
  and the key path as an operator would write it (``devices[1].baudrate``), the way Home
  Assistant formats config errors.
* Environment overrides use pydantic-settings: ``VSIM_UPSTREAM__URL``, ``VSIM_AGENT__ID``,
  ``VSIM_LOG__LEVEL``… (double underscore separates the section from the key).
* The API key comes from ``upstream.api_key``, else ``upstream.api_key_file``, else
  ``$CREDENTIALS_DIRECTORY/api_key`` (systemd ``LoadCredential=api_key:…``).  The signing
  secret likewise (``signing_secret``, ``signing_secret_file``, credential ``signing_secret``).
  Secrets are ``SecretStr`` so they never print.
* Each ``[[devices]]`` table is validated by its driver's own model (``Driver.config_model``),
  resolved lazily from the registry; the core composes them as a union tagged on ``driver``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from drivers import UnknownDriverError, resolve
from drivers.base import Driver, DriverConfig, UssdRecipe

DEFAULT_CONFIG_PATH = Path("/etc/vsim-agent/config.toml")
E164 = re.compile(r"^\+[1-9]\d{6,14}$")


class ConfigError(Exception):
    """A config problem an operator can fix; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentSection(_Section):
    id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=128)
    state_dir: Path = Path("/var/lib/vsim-agent")
    #: A multipart message missing parts is delivered with ``complete: false`` after this long.
    reassembly_timeout_s: float = Field(600.0, gt=0)


class UpstreamSection(_Section):
    url: str = "http://127.0.0.1:8780/agent/v1"
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    signing_secret: SecretStr | None = None
    signing_secret_file: Path | None = None
    heartbeat_s: float = Field(60.0, gt=0)
    batch_max: int = Field(100, ge=1, le=1000)
    timeout_s: float = Field(10.0, gt=0)
    #: Long-poll wait asked of the hub (PROTOCOL.md section 5).
    poll_wait_s: int = Field(25, ge=1, le=120)
    #: Retry interval while the hub rejects our key (PROTOCOL.md section 2: every 5 min).
    auth_retry_s: float = Field(300.0, gt=0)
    #: Cap of the exponential backoff for transient errors (PROTOCOL.md section 2: 5 min).
    backoff_max_s: float = Field(300.0, gt=0)
    #: Largest hub answer read, decoded (gzip inflated): beyond it the answer is dropped and
    #: retried as transient, so a broken or hostile hub cannot grow the agent's memory.
    max_body_mb: int = Field(16, ge=1, le=1024)
    allow_insecure: bool = False
    ca_file: Path | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return v.rstrip("/")


class AdminSection(_Section):
    listen: str = "127.0.0.1:9108"
    enabled: bool = True

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        split_listen(v)
        return v


class LogSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"
    #: Show SMS text and phone numbers in logs (off: redacted).
    show_content: bool = False


class SimOverride(_Section):
    iccid: str = Field(pattern=r"^\d{18,22}[0-9A-Fa-f]?$")
    number: str | None = None

    @field_validator("number")
    @classmethod
    def _number(cls, v: str | None) -> str | None:
        if v is not None and not E164.match(v):
            raise ValueError("must be E.164 with a leading + (e.g. +79001234567)")
        return v


class NumberDiscovery(_Section):
    mcc_mnc: str = Field(pattern=r"^\d{5,6}$")
    ussd: str = Field(min_length=2)
    regex: str

    @field_validator("regex")
    @classmethod
    def _regex(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return v


class Settings(BaseSettings):
    """The whole file.  Devices stay raw here and are validated by their drivers' models."""

    model_config = SettingsConfigDict(
        env_prefix="VSIM_", env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    agent: AgentSection = Field(default_factory=lambda: AgentSection())
    upstream: UpstreamSection = Field(default_factory=lambda: UpstreamSection())
    admin: AdminSection = Field(default_factory=lambda: AdminSection())
    log: LogSection = Field(default_factory=lambda: LogSection())
    devices: list[dict[str, Any]] = Field(default_factory=list)
    sims: list[SimOverride] = Field(default_factory=list)
    number_discovery: list[NumberDiscovery] = Field(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file: an operator can override one key without editing it.
        return (env_settings, init_settings)


@dataclass(slots=True)
class DeviceSpec:
    name: str
    driver_cls: type[Driver]
    config: DriverConfig


@dataclass(slots=True)
class Config:
    """The validated configuration the app runs on."""

    path: Path | None
    settings: Settings
    devices: list[DeviceSpec]
    api_key: SecretStr
    signing_secret: SecretStr | None
    warnings: list[str] = field(default_factory=list)

    @property
    def agent(self) -> AgentSection:
        return self.settings.agent

    @property
    def upstream(self) -> UpstreamSection:
        return self.settings.upstream

    @property
    def sim_numbers(self) -> dict[str, str]:
        return {s.iccid: s.number for s in self.settings.sims if s.number}

    @property
    def number_recipes(self) -> list[UssdRecipe]:
        return [UssdRecipe(r.mcc_mnc, r.ussd, r.regex) for r in self.settings.number_discovery]


def split_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:9108"`` / ``"[::1]:9108"`` → host and port."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not port_s.isdigit() or not host or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"{value!r} is not host:port")
    return host.strip("[]"), int(port_s)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for item in loc:
        out += f"[{item}]" if isinstance(item, int) else (f".{item}" if out else str(item))
    return out or "(top level)"


def _format(where: str, exc: ValidationError, prefix: tuple[int | str, ...] = ()) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif (
            "input" in err
            and err["type"] not in ("missing",)
            and not isinstance(err["input"], dict | list)
        ):
            shown = err["input"]
            if any(s in str(loc[-1:]).lower() for s in ("key", "secret")):
                shown = "***"
            msg = f"{msg} (got {shown!r})"
        lines.append(f"{where}: {_loc(loc)}: {msg}")
    return "\n".join(lines)


def _read_secret(path: Path, where: str, key: str) -> SecretStr:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{where}: {key}: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"{where}: {key}: {path} is empty")
    return SecretStr(value)


def _secret(
    direct: SecretStr | None, file: Path | None, credential: str, where: str, key: str
) -> SecretStr | None:
    if direct is not None and direct.get_secret_value():
        return direct
    if file is not None:
        return _read_secret(file, where, f"{key}_file")
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / credential).exists():
        return _read_secret(Path(cred_dir) / credential, where, f"credential {credential}")
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_config(
    path: Path | None, *, data: dict[str, Any] | None = None, require_key: bool = True
) -> Config:
    """Read, validate and resolve a config file (or an in-memory dict when ``data`` is given).

    ``require_key=False`` (``vsim-agent check``) turns a missing API key into a warning: an
    operator checks the file outside systemd, where ``LoadCredential`` is not there.
    """
    where = str(path) if path is not None else "<config>"
    if data is None:
        if path is None:
            raise ConfigError("no config file given")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read: {exc.strerror}") from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format(where, exc)) from None

    devices: list[DeviceSpec] = []
    seen: dict[str, int] = {}
    errors: list[str] = []
    for i, raw_dev in enumerate(settings.devices):
        name, driver = raw_dev.get("name"), raw_dev.get("driver")
        if not isinstance(name, str) or not name:
            errors.append(f"{where}: devices[{i}].name: required, a non-empty string")
            continue
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            errors.append(f"{where}: devices[{i}].name: use letters, digits, '_', '.', '-'")
            continue
        if name in seen:
            errors.append(
                f"{where}: devices[{i}].name: duplicate device name {name!r} "
                f"(also devices[{seen[name]}])"
            )
            continue
        seen[name] = i
        if not isinstance(driver, str):
            errors.append(f'{where}: devices[{i}].driver: required (e.g. "simulated", "at")')
            continue
        try:
            cls = resolve(driver)
        except UnknownDriverError as exc:
            errors.append(f"{where}: devices[{i}].driver: {exc}")
            continue
        try:
            cfg = cls.config_model.model_validate(raw_dev)
        except ValidationError as exc:
            errors.append(_format(where, exc, ("devices", i)))
            continue
        devices.append(DeviceSpec(name, cls, cfg))
    iccids: dict[str, int] = {}
    for i, sim in enumerate(settings.sims):
        if sim.iccid in iccids:
            errors.append(f"{where}: sims[{i}].iccid: duplicate of sims[{iccids[sim.iccid]}]")
        iccids[sim.iccid] = i
    if errors:
        raise ConfigError("\n".join(errors))

    up = settings.upstream
    api_key = _secret(up.api_key, up.api_key_file, "api_key", where, "upstream.api_key")
    missing_key = (
        f"{where}: upstream.api_key: required (set api_key, api_key_file, or systemd "
        "LoadCredential=api_key:...)"
    )
    if api_key is None and require_key:
        raise ConfigError(missing_key)
    signing = _secret(
        up.signing_secret,
        up.signing_secret_file,
        "signing_secret",
        where,
        "upstream.signing_secret",
    )
    cfg_out = Config(path, settings, devices, api_key or SecretStr(""), signing)
    if api_key is None:
        cfg_out.warnings.append(
            missing_key + "; fine under systemd if the unit loads the credential"
        )

    parts = urlsplit(up.url)
    if parts.scheme == "http" and not up.allow_insecure and not _is_loopback(parts.hostname or ""):
        raise ConfigError(
            f"{where}: upstream.url: plain http to a non-loopback host would send the API key "
            "in clear; use https, or set upstream.allow_insecure = true"
        )
    if up.ca_file is not None and not up.ca_file.is_file():
        raise ConfigError(f"{where}: upstream.ca_file: {up.ca_file} is not a file")
    if path is not None and up.api_key is not None:
        try:
            mode = path.stat().st_mode
        except OSError:
            mode = 0
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            cfg_out.warnings.append(
                f"{where} holds upstream.api_key and is readable by group/others "
                f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it or use api_key_file / "
                "LoadCredential"
            )
    return cfg_out
