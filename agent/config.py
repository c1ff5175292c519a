"""Configuration: TOML file + ``VSIM_…`` environment overrides + secrets from files.

Owns parsing and validation only; nothing here opens devices or sockets.

* Unknown keys, wrong types and duplicate device names are errors.  Every error names the file
  and the key path as an operator would write it (``devices[1].baudrate``), the way Home
  Assistant formats config errors; an error about a value set from the environment names the
  variable instead (``VSIM_UPSTREAM__TIMEOUT_S: upstream.timeout_s: …``).
* Environment overrides (:mod:`agent.config_env`): ``VSIM_UPSTREAM__URL``, ``VSIM_AGENT__ID``,
  ``VSIM_DEVICES='[…]'`` (double underscore separates the section from the key).  Unknown
  ``VSIM_*`` variables are errors.
* The API key comes from ``upstream.api_key``, else ``upstream.api_key_file``, else
  ``$CREDENTIALS_DIRECTORY/api_key`` (systemd ``LoadCredential=api_key:…``).  The signing
  secret likewise (``signing_secret``, ``signing_secret_file``, credential ``signing_secret``).
  Secrets are ``SecretStr`` so they never print.
* Each ``[[devices]]`` table is validated by its driver's own model (``Driver.config_model``),
  resolved lazily from the registry; the core composes them as a union tagged on ``driver``.

Whatever ``run`` would refuse, ``load_config`` refuses first, so ``vsim-agent check`` catches it
(the one difference: ``check`` only warns about a missing API key, see :func:`load_config`).
Every bad input is a :class:`ConfigError` (exit 2), never a traceback:

* **Secrets.**  A key typed into the config or the environment (``api_key``,
  ``signing_secret``, ``VSIM_UPSTREAM__API_KEY``) must be visible ASCII without whitespace:
  a trailing space or newline there is a paste accident that would otherwise reach the
  ``Authorization`` header (``Illegal header value``) or the HMAC, so it is *refused*, naming
  the key and the problem, never the value.  A key *file* (``api_key_file``, the systemd
  credential) has its surrounding whitespace *stripped*, because ``echo KEY > file`` ends it
  with a newline; what is left must follow the same rule.  A key file must be a regular file
  of at most 4 KiB (``/dev/zero`` or a FIFO must not hang the check).
* **``api_key_file`` is never echoed unless it exists.**  An operator who pastes the key itself
  into ``api_key_file`` gets "no such file" with the key path only: a value that is not an
  existing path may well be the secret.  A path that does exist is a path, and is shown.
* **``agent.id``** travels as ``X-Agent-Id``: visible ASCII, 1 to 128 characters.
* **Numbers** are finite (no ``inf``/``nan``) and bounded: timeouts and intervals have a floor
  that keeps the hub from being hammered and a ceiling (an hour for request timeouts) past
  which a value is a typo that would wedge a loop.
* **Sizes.**  Values repeated in errors are cut to 80 characters, at most 40 error lines are
  printed; nesting deeper than 16 levels (TOML or ``VSIM_*`` JSON) and NUL characters are
  refused before pydantic sees them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import ssl
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_origin
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from agent.config_env import merge, read_env
from agent.config_rules import cut, limit_lines, shown, structure_problem, token_problem
from drivers import UnknownDriverError, resolve
from drivers.base import Driver, DriverConfig, UssdRecipe, split_host_port

DEFAULT_CONFIG_PATH = Path("/etc/vsim-agent/config.toml")
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
#: A key or secret longer than this is not a key (a file or a log pasted by mistake).
SECRET_MAX = 4096


class ConfigError(Exception):
    """A config problem an operator can fix; the message names the file and the key."""


class _Section(BaseModel):
    # inf and nan pass ``gt=0``: a timeout of inf wedges a loop without a log line.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _secret_shape(v: SecretStr | None) -> SecretStr | None:
    # An empty value means "not set here" (the file or the credential is used instead).
    if v is not None and v.get_secret_value():
        if len(v.get_secret_value()) > SECRET_MAX:
            raise ValueError(f"longer than {SECRET_MAX} characters; not a key")
        problem = token_problem(v.get_secret_value())
        if problem is not None:
            raise ValueError(f"{problem}; the value is not shown")
    return v


class AgentSection(_Section):
    # validate_default: the hostname default goes into the X-Agent-Id header too.
    id: str = Field(
        default_factory=socket.gethostname, min_length=1, max_length=128, validate_default=True
    )
    state_dir: Path = Path("/var/lib/vsim-agent")
    #: A multipart message missing parts is delivered with ``complete: false`` after this long.
    reassembly_timeout_s: float = Field(600.0, ge=1, le=7 * 86400)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        problem = token_problem(v)
        if problem is not None:
            raise ValueError(f"{problem}; it is sent as the X-Agent-Id header")
        return v


class UpstreamSection(_Section):
    url: str = "http://127.0.0.1:8780/agent/v1"
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    signing_secret: SecretStr | None = None
    signing_secret_file: Path | None = None
    heartbeat_s: float = Field(60.0, ge=1, le=3600)
    batch_max: int = Field(100, ge=1, le=1000)
    timeout_s: float = Field(10.0, ge=0.1, le=3600)
    #: Long-poll wait asked of the hub (PROTOCOL.md section 5).
    poll_wait_s: int = Field(25, ge=1, le=120)
    #: Retry interval while the hub rejects our key (PROTOCOL.md section 2: every 5 min).
    auth_retry_s: float = Field(300.0, ge=1, le=86400)
    #: Cap of the exponential backoff for transient errors (PROTOCOL.md section 2: 5 min).
    backoff_max_s: float = Field(300.0, ge=1, le=3600)
    #: Largest hub answer read, decoded (gzip inflated): beyond it the answer is dropped and
    #: retried as transient, so a broken or hostile hub cannot grow the agent's memory.
    max_body_mb: int = Field(16, ge=1, le=1024)
    allow_insecure: bool = False
    ca_file: Path | None = None

    @field_validator("api_key", "signing_secret")
    @classmethod
    def _secrets(cls, v: SecretStr | None) -> SecretStr | None:
        return _secret_shape(v)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in v):
            raise ValueError("contains whitespace or a control character")
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        try:
            # What the client will do with it at the first request; refuse it now instead.
            _ = parts.port  # ValueError when out of range
            httpx.URL(v)
        except (ValueError, httpx.InvalidURL, UnicodeError) as exc:
            raise ValueError(f"not a usable URL: {cut(str(exc))}") from None
        return v.rstrip("/")


class AdminSection(_Section):
    listen: str = "127.0.0.1:9108"
    enabled: bool = True

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, _port = split_host_port(v)
        # The admin server binds this at start; a host that is neither an address nor a
        # plausible name would only fail there, after check said OK.
        if not _is_ip(host) and not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", host):
            raise ValueError(f"{shown(host)} is neither an IP address nor a host name")
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


class Settings(_Section):
    """The whole file.  Devices stay raw here and are validated by their drivers' models."""

    agent: AgentSection = Field(default_factory=lambda: AgentSection())
    upstream: UpstreamSection = Field(default_factory=lambda: UpstreamSection())
    admin: AdminSection = Field(default_factory=lambda: AdminSection())
    log: LogSection = Field(default_factory=lambda: LogSection())
    #: Raw tables, validated by each driver's model; kept out of repr() because they carry
    #: device credentials (gateway passwords) in clear (DESIGN.md invariant 8).
    devices: list[dict[str, Any]] = Field(default_factory=list, repr=False)
    sims: list[SimOverride] = Field(default_factory=list)
    number_discovery: list[NumberDiscovery] = Field(default_factory=list)


#: Sections written as arrays of tables, and as tables (for :mod:`agent.config_env`).
LISTS = frozenset(n for n, f in Settings.model_fields.items() if get_origin(f.annotation) is list)
TABLES = frozenset(Settings.model_fields) - LISTS


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


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for item in loc:
        # A key is the operator's text too: a 10 MB unknown key must not be echoed whole.
        name = cut(str(item), 40)
        out += f"[{item}]" if isinstance(item, int) else (f".{name}" if out else name)
    return out or "(top level)"


#: Maps a key path to the name an error starts with: the variable that set it, else the file.
Where = Callable[[tuple[int | str, ...]], str]


def _is_secret(loc: tuple[int | str, ...]) -> bool:
    # Also a driver's credentials (e.g. a gateway line's ``password``).
    last = str(loc[-1]).lower() if loc else ""
    return any(word in last for word in ("key", "secret", "password", "token"))


def _format(where: Where, exc: ValidationError, prefix: tuple[int | str, ...] = ()) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(err["loc"])
        msg = cut(err["msg"].removeprefix("Value error, "), 200)
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif (
            "input" in err
            and err["type"] not in ("missing",)
            and not isinstance(err["input"], dict | list)
            and not _is_secret(loc)
        ):
            msg = f"{msg} (got {shown(err['input'])})"
        lines.append(f"{where(loc)}: {_loc(loc)}: {msg}")
    return lines


def _read_secret(path: Path, where: str, key: str) -> SecretStr:
    """The secret in ``path``, surrounding whitespace stripped (see the module docstring).

    ``path`` is only repeated once it is known to exist: a value that is not a path may be
    the key itself, written into ``…_file`` by mistake.
    """
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError, ValueError):
        raise ConfigError(
            f"{where}: {key}: no such file (the value is not repeated: if it is the key itself, "
            "put it in a file and name that file here)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{where}: {key}: cannot stat the file: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{where}: {key}: {cut(str(path))} is not a regular file")
    try:
        with path.open("rb") as fh:
            raw = fh.read(SECRET_MAX + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: {key}: cannot read {cut(str(path))}: {exc.strerror}") from None
    # A key file normally ends with a newline (echo KEY > file): strip, then apply the rule.
    value = raw.strip(b" \t\r\n").decode("latin-1")
    if len(raw) > SECRET_MAX:
        raise ConfigError(f"{where}: {key}: {cut(str(path))} is larger than {SECRET_MAX} bytes")
    if not value:
        raise ConfigError(f"{where}: {key}: {cut(str(path))} is empty")
    problem = token_problem(value)
    if problem is not None:
        raise ConfigError(f"{where}: {key}: the key in {cut(str(path))} {problem}")
    return SecretStr(value)


def _secret(
    up: UpstreamSection,
    name: Literal["api_key", "signing_secret"],
    where: Where,
    environ: Mapping[str, str],
) -> SecretStr | None:
    direct: SecretStr | None = getattr(up, name)
    file: Path | None = getattr(up, f"{name}_file")
    if direct is not None and direct.get_secret_value():
        return direct
    if file is not None:
        loc = ("upstream", f"{name}_file")
        return _read_secret(file, where(loc), _loc(loc))
    cred_dir = environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / name).exists():
        return _read_secret(Path(cred_dir) / name, "$CREDENTIALS_DIRECTORY", f"credential {name}")
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_file(path: Path, where: str) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively.
        raise ConfigError(f"{where}: not valid TOML: nested too deeply") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: not valid TOML: {cut(str(exc), 200)}") from None


def _devices(settings: Settings, where: Where) -> tuple[list[DeviceSpec], list[str]]:
    devices: list[DeviceSpec] = []
    seen: dict[str, int] = {}
    errors: list[str] = []
    for i, raw_dev in enumerate(settings.devices):
        at = where(("devices", i))
        name, driver = raw_dev.get("name"), raw_dev.get("driver")
        if not isinstance(name, str) or not name:
            errors.append(f"{at}: devices[{i}].name: required, a non-empty string")
            continue
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            errors.append(f"{at}: devices[{i}].name: use letters, digits, '_', '.', '-'")
            continue
        if name in seen:
            errors.append(
                f"{at}: devices[{i}].name: duplicate device name {name!r} "
                f"(also devices[{seen[name]}])"
            )
            continue
        seen[name] = i
        if not isinstance(driver, str):
            errors.append(f'{at}: devices[{i}].driver: required (e.g. "simulated", "at")')
            continue
        try:
            cls = resolve(driver)
        except UnknownDriverError as exc:
            errors.append(f"{at}: devices[{i}].driver: {cut(str(exc), 200)}")
            continue
        except Exception as exc:
            # A "module:Class" driver runs arbitrary import-time code; whatever it raises, the
            # operator needs the key path, not a traceback.
            errors.append(
                f"{at}: devices[{i}].driver: cannot load {shown(driver)}: "
                f"{type(exc).__name__}: {cut(str(exc))}"
            )
            continue
        try:
            cfg = cls.config_model.model_validate(raw_dev)
        except ValidationError as exc:
            errors.extend(_format(where, exc, ("devices", i)))
            continue
        devices.append(DeviceSpec(name, cls, cfg))
    iccids: dict[str, int] = {}
    for i, sim in enumerate(settings.sims):
        if sim.iccid in iccids:
            errors.append(
                f"{where(('sims', i))}: sims[{i}].iccid: duplicate of sims[{iccids[sim.iccid]}]"
            )
        iccids[sim.iccid] = i
    return devices, errors


def load_config(
    path: Path | None,
    *,
    data: dict[str, Any] | None = None,
    require_key: bool = True,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read, validate and resolve a config file (or an in-memory dict when ``data`` is given),
    with the ``VSIM_*`` overrides of ``environ`` (default: the process environment) on top;
    ``$CREDENTIALS_DIRECTORY`` is looked up there too.

    ``require_key=False`` (``vsim-agent check``) turns a missing API key into a warning: an
    operator checks the file outside systemd, where ``LoadCredential`` is not there.  Every
    other refusal is the same for ``check`` and ``run``.
    """
    file_where = str(path) if path is not None else "<config>"
    if data is None:
        if path is None:
            raise ConfigError("no config file given")
        data = _parse_file(path, file_where)
    if environ is None:
        environ = os.environ
    env = read_env(environ, TABLES, LISTS)
    if env.errors:
        raise ConfigError(limit_lines(env.errors))

    def where(loc: tuple[int | str, ...]) -> str:
        # The longest prefix of the path that a variable set (a list index never is one).
        for n in range(len(loc), 0, -1):
            prefix = loc[:n]
            if all(isinstance(x, str) for x in prefix):
                origin = env.origins.get(tuple(str(x) for x in prefix))
                if origin is not None:
                    return origin
        return file_where

    merged = merge(data, env)
    problem = structure_problem(merged)
    if problem is not None:
        loc, what = problem
        raise ConfigError(f"{where(loc)}: {_loc(loc)}: {what}")
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(limit_lines(_format(where, exc))) from None

    devices, errors = _devices(settings, where)
    if errors:
        raise ConfigError(limit_lines(errors))

    up = settings.upstream
    api_key = _secret(up, "api_key", where, environ)
    missing_key = (
        f"{file_where}: upstream.api_key: required (set api_key, api_key_file, or systemd "
        "LoadCredential=api_key:...)"
    )
    if api_key is None and require_key:
        raise ConfigError(missing_key)
    signing = _secret(up, "signing_secret", where, environ)
    cfg_out = Config(path, settings, devices, api_key or SecretStr(""), signing)
    if api_key is None:
        cfg_out.warnings.append(
            missing_key + "; fine under systemd if the unit loads the credential"
        )

    parts = urlsplit(up.url)
    if parts.scheme == "http" and not up.allow_insecure and not _is_loopback(parts.hostname or ""):
        raise ConfigError(
            f"{where(('upstream', 'url'))}: upstream.url: plain http to a non-loopback host "
            "would send the API key in clear; use https, or set upstream.allow_insecure = true"
        )
    if up.ca_file is not None:
        at = f"{where(('upstream', 'ca_file'))}: upstream.ca_file"
        if not up.ca_file.is_file():
            raise ConfigError(f"{at}: {cut(str(up.ca_file))} is not a file")
        try:
            # The hub client builds this context at start; a bad bundle must fail here.
            ssl.create_default_context(cafile=str(up.ca_file))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{at}: {cut(str(up.ca_file))} is not a usable CA bundle: {cut(str(exc))}"
            ) from None
    if path is not None and up.api_key is not None:
        try:
            mode = path.stat().st_mode
        except OSError:
            mode = 0
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            cfg_out.warnings.append(
                f"{file_where} holds upstream.api_key and is readable by group/others "
                f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it or use api_key_file / "
                "LoadCredential"
            )
    return cfg_out
