"""Config loading: the example file, env overrides, secrets, and errors that name file and key."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import ConfigError, load_config
from agent.config_rules import MAX_LINES

ROOT = Path(__file__).resolve().parents[2]
BASE = """
[agent]
id = "t"
state_dir = "{state}"
[upstream]
url = "http://127.0.0.1:8780/agent/v1"
api_key = "k-123"
"""


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    p = tmp_path / name
    p.write_text(text.replace("{state}", str(tmp_path / "state")))
    p.chmod(0o600)
    return p


def test_example_config_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The example points api_key_file at /etc; the env override stands in for the file.
    monkeypatch.setenv("VSIM_UPSTREAM__API_KEY", "from-env")
    cfg = load_config(ROOT / "config.example.toml")
    assert cfg.api_key.get_secret_value() == "from-env"
    assert cfg.agent.id == "farm-3"
    assert [(d.name, d.config.driver) for d in cfg.devices] == [("pool1", "at")]
    assert cfg.sim_numbers == {"89701012345678901234": "+79001234567"}
    assert cfg.number_recipes[0].mcc_mnc == "25001"


def test_env_overrides_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VSIM_UPSTREAM__HEARTBEAT_S", "7")
    monkeypatch.setenv("VSIM_AGENT__ID", "env-id")
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.upstream.heartbeat_s == 7
    assert cfg.agent.id == "env-id"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            '[[devices]]\nname="a"\ndriver="simulated"\n[[devices]]\nname="b"\ndriver="simulated"'
            '\nsims="many"',
            "devices[1].sims",
        ),
        (
            '[[devices]]\nname="a"\ndriver="simulated"\nbaudrate=9600',
            "devices[0].baudrate: unknown key",
        ),
        (
            '[[devices]]\nname="a"\ndriver="simulated"\n[[devices]]\nname="a"\ndriver="simulated"',
            "devices[1].name: duplicate device name 'a'",
        ),
        ('[[devices]]\nname="a"\ndriver="nosuch"', "devices[0].driver: unknown driver 'nosuch'"),
        ("[log]\nlevel='loud'", "log.level"),
        ("[agent]\nbogus=1", "agent.bogus: unknown key"),
        ("[[sims]]\niccid='123'\nnumber='+79001234567'", "sims[0].iccid"),
        ("[[sims]]\niccid='89701012345678901234'\nnumber='89001234567'", "sims[0].number"),
        (
            "[[number_discovery]]\nmcc_mnc='25001'\nussd='*111#'\nregex='('",
            "number_discovery[0].regex",
        ),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, extra: str, expected: str) -> None:
    text = BASE
    if extra.startswith("[agent]"):
        text = text.replace('[agent]\nid = "t"', '[agent]\nid = "t"\n' + extra.split("\n", 1)[1])
    else:
        text += "\n" + extra
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_wrong_type_in_section(tmp_path: Path) -> None:
    path = write(
        tmp_path, BASE.replace('api_key = "k-123"', 'api_key = "k-123"\nheartbeat_s = "often"')
    )
    with pytest.raises(ConfigError, match=r"upstream\.heartbeat_s"):
        load_config(path)


def test_bad_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[agent\nid=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_secret_never_in_error(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace('api_key = "k-123"', "api_key = 12345"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "12345" not in str(err.value)


def test_api_key_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    base = BASE.replace('api_key = "k-123"\n', "")
    with pytest.raises(ConfigError, match="upstream.api_key: required"):
        load_config(write(tmp_path, base))
    key = tmp_path / "key"
    key.write_text("from-file\n")
    cfg = load_config(write(tmp_path, base + f'api_key_file = "{key}"\n'))
    assert cfg.api_key.get_secret_value() == "from-file"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api_key").write_text("from-credential")
    (creds / "signing_secret").write_text("sig")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = load_config(write(tmp_path, base))
    assert cfg.api_key.get_secret_value() == "from-credential"
    assert cfg.signing_secret is not None
    assert "from-credential" not in repr(cfg.settings)
    (tmp_path / "empty").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_config(write(tmp_path, base + f'api_key_file = "{tmp_path / "empty"}"\n'))


def test_plain_http_refused_unless_loopback_or_allowed(tmp_path: Path) -> None:
    remote = BASE.replace("http://127.0.0.1:8780", "http://hub.example")
    with pytest.raises(ConfigError, match="upstream.url: plain http"):
        load_config(write(tmp_path, remote))
    allowed = remote.replace('api_key = "k-123"', 'api_key = "k-123"\nallow_insecure = true')
    assert load_config(write(tmp_path, allowed)).upstream.url == "http://hub.example/agent/v1"
    load_config(write(tmp_path, BASE.replace("127.0.0.1", "localhost")))


def test_world_readable_key_warns(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    assert load_config(path).warnings == []
    path.chmod(0o644)
    warnings = load_config(path).warnings
    assert warnings and "readable by group/others" in warnings[0]


def test_check_command_exit_codes(tmp_path: Path) -> None:
    import subprocess
    import sys

    good = write(tmp_path, BASE + '\n[[devices]]\nname="a"\ndriver="simulated"\n')
    bad = write(
        tmp_path, BASE + '\n[[devices]]\nname="a"\ndriver="simulated"\nsims=0\n', "bad.toml"
    )
    exe = [sys.executable, "-m", "agent"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VSIM_")}
    ok = subprocess.run([*exe, "check", "-c", str(good)], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout
    ko = subprocess.run([*exe, "check", "-c", str(bad)], capture_output=True, text=True, env=env)
    assert ko.returncode == 2
    assert f"{bad}: devices[0].sims" in ko.stderr
    run = subprocess.run([*exe, "run", "-c", str(bad)], capture_output=True, text=True, env=env)
    assert run.returncode == 2


# -- issue #12 items 3, 4, 9: secrets, header-bound values, hostile inputs ------------------

SECRET = "sk-live-7f3a9c2e41d84b5f"
SECRET_PART = "7f3a9c2e41d84b5f"
NO_ENV: dict[str, str] = {}


def toml_str(value: str) -> str:
    return json.dumps(value)  # JSON string escapes are TOML basic-string escapes


def with_upstream(tmp_path: Path, lines: str, name: str = "c.toml") -> Path:
    """BASE with its ``api_key`` line replaced by ``lines``."""
    return write(tmp_path, BASE.replace('api_key = "k-123"', lines), name)


def refused(path: Path | None, environ: dict[str, str] | None = None) -> str:
    """The ConfigError text ``load_config`` raises for ``path`` (fails if it loads)."""
    with pytest.raises(ConfigError) as err:
        load_config(path, environ=NO_ENV if environ is None else environ)
    return str(err.value)


BAD_TOKENS = [
    (SECRET + " ", "has leading or trailing whitespace"),
    (SECRET + "\n", "has leading or trailing whitespace"),
    ("\t" + SECRET, "has leading or trailing whitespace"),
    ("sk-live " + SECRET_PART, "contains whitespace"),
    (SECRET + "\u00e9", "contains a non-ASCII character"),
    ("sk-live-\x7f" + SECRET_PART, "contains a control character"),
    ("sk-live-\x01" + SECRET_PART, "contains a control character"),
]


@pytest.mark.parametrize(("value", "problem"), BAD_TOKENS)
@pytest.mark.parametrize("key", ["api_key", "signing_secret"])
def test_inline_secret_with_whitespace_or_non_ascii_is_refused_without_the_value(
    tmp_path: Path, key: str, value: str, problem: str
) -> None:
    lines = (
        f"api_key = {toml_str(value)}"
        if key == "api_key"
        else (f'api_key = "k-123"\nsigning_secret = {toml_str(value)}')
    )
    path = with_upstream(tmp_path, lines)
    text = refused(path)
    assert f"{path}: upstream.{key}: {problem}" in text
    assert SECRET_PART not in text


@pytest.mark.parametrize(("value", "problem"), BAD_TOKENS)
@pytest.mark.parametrize("var", ["VSIM_UPSTREAM__API_KEY", "VSIM_UPSTREAM__SIGNING_SECRET"])
def test_env_secret_with_whitespace_or_non_ascii_names_the_variable(
    tmp_path: Path, var: str, value: str, problem: str
) -> None:
    path = write(tmp_path, BASE)
    text = refused(path, {var: value})
    key = var.split("__")[1].lower()
    assert text.startswith(f"{var}: upstream.{key}: {problem}")
    assert str(path) not in text
    assert SECRET_PART not in text


def test_empty_inline_key_still_falls_back_to_the_file(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text(SECRET + "\n")
    path = with_upstream(tmp_path, f'api_key = ""\napi_key_file = "{key}"')
    assert load_config(path, environ=NO_ENV).api_key.get_secret_value() == SECRET


@pytest.mark.parametrize("content", [SECRET + "\n", SECRET + "\r\n", f"  {SECRET}\t\n\n"])
def test_key_file_surrounding_whitespace_is_stripped(tmp_path: Path, content: str) -> None:
    key = tmp_path / "key"
    key.write_bytes(content.encode())
    sig = tmp_path / "sig"
    sig.write_bytes(content.replace("sk-", "whsec-").encode())
    path = with_upstream(tmp_path, f'api_key_file = "{key}"\nsigning_secret_file = "{sig}"')
    cfg = load_config(path, environ=NO_ENV)
    assert cfg.api_key.get_secret_value() == SECRET
    assert cfg.signing_secret is not None
    assert cfg.signing_secret.get_secret_value() == "whsec-live-" + SECRET_PART


def test_credential_with_trailing_newline_works(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api_key").write_text(SECRET + "\n")
    (creds / "signing_secret").write_text("whsec 1\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    path = with_upstream(tmp_path, "")
    with pytest.raises(ConfigError, match=r"credential signing_secret: .* contains whitespace"):
        load_config(path, environ=env)
    (creds / "signing_secret").write_text("whsec-1\n")
    assert load_config(path, environ=env).api_key.get_secret_value() == SECRET


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"sk-live " + SECRET_PART.encode() + b"\n", "contains whitespace"),
        (SECRET.encode() + b"\xff\xfe\n", "contains a non-ASCII character"),  # not even UTF-8
        (b"\xef\xbb\xbf" + SECRET.encode(), "contains a non-ASCII character"),  # a byte-order mark
        (b"sk-live-\x00" + SECRET_PART.encode(), "contains a control character"),
        (b" \n\t\n", "is empty"),
        (b"k" * 5000, "larger than 4096 bytes"),
    ],
)
def test_bad_key_file_is_refused_with_its_path(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    key = tmp_path / "key"
    key.write_bytes(content)
    path = with_upstream(tmp_path, f'api_key_file = "{key}"')
    text = refused(path)
    assert text.startswith(f"{path}: upstream.api_key_file: ")
    assert str(key) in text
    assert problem in text
    assert SECRET_PART not in text


def test_key_file_that_is_a_directory_or_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target in (tmp_path, fifo):
        path = with_upstream(tmp_path, f'api_key_file = "{target}"')
        assert f"{target} is not a regular file" in refused(path)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (SECRET, "no such file"),
        (SECRET + "\n", "no such file"),
        ("sk-live-\x00" + SECRET_PART, "contains a NUL character"),
    ],
)
def test_api_key_file_holding_the_key_itself_is_not_echoed(
    tmp_path: Path, value: str, problem: str
) -> None:
    path = with_upstream(tmp_path, f"api_key_file = {toml_str(value)}")
    text = refused(path)
    assert text.startswith(f"{path}: upstream.api_key_file: {problem}")
    assert SECRET_PART not in text
    env = {"VSIM_UPSTREAM__API_KEY_FILE": value, "VSIM_UPSTREAM__API_KEY": ""}
    env_text = refused(write(tmp_path, BASE), env)
    assert env_text.startswith(f"VSIM_UPSTREAM__API_KEY_FILE: upstream.api_key_file: {problem}")
    assert SECRET_PART not in env_text


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("ферма-3", "contains a non-ASCII character"),
        ("farm 3", "contains whitespace"),
        ("farm-3\n", "has leading or trailing whitespace"),
        ("farm\x013", "contains a control character"),
    ],
)
def test_agent_id_must_be_visible_ascii(tmp_path: Path, value: str, problem: str) -> None:
    path = write(tmp_path, BASE.replace('id = "t"', f"id = {toml_str(value)}"))
    assert f"{path}: agent.id: {problem}" in refused(path)
    env_text = refused(write(tmp_path, BASE), {"VSIM_AGENT__ID": value})
    assert env_text.startswith(f"VSIM_AGENT__ID: agent.id: {problem}")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("x = " + "[" * 5000 + "]" * 5000, "not valid TOML: nested too deeply"),
        ("x = " + "{a = " * 5000 + "1" + "}" * 5000, "not valid TOML: nested too deeply"),
        ("[" + ".".join(["a"] * 5000) + "]", "a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a: nested deeper"),
    ],
)
def test_5000_level_nesting_is_an_error_not_a_traceback(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = write(tmp_path, BASE + text + "\n")
    out = refused(path)
    assert out.startswith(f"{path}: ")
    assert problem in out
    assert len(out) < 500


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("VSIM_UPSTREAM", "{", "VSIM_UPSTREAM: must be a JSON object of upstream keys; not valid"),
        ("VSIM_UPSTREAM", "[1]", "VSIM_UPSTREAM: must be a JSON object of upstream keys, not a"),
        ("VSIM_DEVICES", "notjson", "VSIM_DEVICES: must be a JSON array of tables; not valid JSON"),
        ("VSIM_DEVICES", '{"name": "a"}', "VSIM_DEVICES: must be a JSON array of tables, not a"),
        ("VSIM_SIMS", "[" * 5000 + "]" * 5000, "VSIM_SIMS: must be a JSON array of tables; it is"),
        ("VSIM_DEVICES", "[" * 100 + "]" * 100, "VSIM_DEVICES: nested deeper than 16 levels"),
        ("VSIM_NOPE__X", "1", "VSIM_NOPE__X: not a config variable: no section 'nope'"),
        ("VSIM_UPSTREM__URL", "http://x", "VSIM_UPSTREM__URL: not a config variable"),
        ("VSIM_DEVICES__0__NAME", "a", "VSIM_DEVICES__0__NAME: devices is a list of tables"),
        ("VSIM_UPSTREAM__", "x", "VSIM_UPSTREAM__: names no key"),
        ("VSIM_UPSTREAM__NOPE", "x", "VSIM_UPSTREAM__NOPE: upstream.nope: unknown key"),
        (
            "VSIM_UPSTREAM__HEARTBEAT_S",
            "often",
            "VSIM_UPSTREAM__HEARTBEAT_S: upstream.heartbeat_s:",
        ),
        ("VSIM_UPSTREAM__TIMEOUT_S", "inf", "VSIM_UPSTREAM__TIMEOUT_S: upstream.timeout_s: Input "),
        ("VSIM_UPSTREAM__TIMEOUT_S", "nan", "VSIM_UPSTREAM__TIMEOUT_S: upstream.timeout_s: Input "),
        ("VSIM_UPSTREAM", '{"batch_max": 0}', "VSIM_UPSTREAM: upstream.batch_max: Input should be"),
        ("VSIM_LOG__LEVEL", "loud", "VSIM_LOG__LEVEL: log.level: Input should be"),
        (
            "VSIM_DEVICES",
            '[{"name": "a", "driver": "simulated", "sims": 0}]',
            "VSIM_DEVICES: devices[0].sims: Input should be",
        ),
        (
            "VSIM_DEVICES",
            '[{"name": "a", "driver": "simulated", "poll_ms": "inf"}]',
            "VSIM_DEVICES: devices[0].poll_ms: Input should be a finite number",
        ),
    ],
)
def test_environment_errors_name_the_variable_not_the_file(
    tmp_path: Path, var: str, value: str, expected: str
) -> None:
    path = write(tmp_path, BASE)
    out = refused(path, {var: value, "PATH": "/usr/bin"})
    assert out.startswith(expected), out
    assert str(path) not in out
    assert len(out) < 500


def test_environment_overrides_merge_and_whitelist(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    env = {
        "VSIM_UPSTREAM": '{"heartbeat_s": 7, "batch_max": 5}',
        "vsim_upstream__batch_max": "9",  # per-key beats the section's JSON; any case
        "VSIM_DEVICES": '[{"name": "e", "driver": "simulated", "sims": 2}]',
        "VSIM_LOG__SHOW_CONTENT": "true",
        # Not configuration: a test seam and the network-tests switch.
        "VSIM_DEBUG_WEDGE": "sender",
        "VSIM_NETWORK_TESTS": "1",
        "VSIM_DIFF_EXAMPLES": "1000",
    }
    cfg = load_config(path, environ=env)
    assert cfg.upstream.heartbeat_s == 7
    assert cfg.upstream.batch_max == 9
    assert cfg.api_key.get_secret_value() == "k-123"  # the file's key survives the JSON section
    assert [(d.name, d.config.driver) for d in cfg.devices] == [("e", "simulated")]
    assert cfg.settings.log.show_content is True


def test_file_errors_still_name_the_file_when_the_environment_sets_other_keys(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, BASE.replace('api_key = "k-123"', 'api_key = "k-123"\ntimeout_s = 0'))
    out = refused(path, {"VSIM_UPSTREAM__HEARTBEAT_S": "5", "VSIM_UPSTREAM": '{"batch_max": 3}'})
    assert out.startswith(f"{path}: upstream.timeout_s: Input should be greater than or equal")


TEN_MB = "x" * 10_000_000


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (f'level = "{TEN_MB}"', "log.level: Input should be"),
        (f'{TEN_MB} = "info"', "log.xxxxxxxxxx"),
        (f'format = "json"\n[admin]\nlisten = "{TEN_MB}"', "admin.listen: "),
        (f'format = "json"\n[[devices]]\nname = "a"\ndriver = "{TEN_MB}"', "devices[0].driver: "),
        (f'format = "json"\n[agent2]\n{TEN_MB} = 1', ": unknown key"),
    ],
)
def test_a_10_mb_value_is_not_echoed(tmp_path: Path, line: str, expected: str) -> None:
    path = write(tmp_path, BASE + "[log]\n" + line + "\n")
    out = refused(path)
    assert expected in out
    assert len(out) < 1000


def test_many_errors_are_capped(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "".join(f"\n[[sims]]\niccid = '{i}'\n" for i in range(500)))
    out = refused(path)
    assert out.count("\n") <= 41
    assert out.endswith("... and 460 more errors")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("timeout_s = inf", "upstream.timeout_s: Input should be a finite number"),
        ("timeout_s = nan", "upstream.timeout_s: Input should be a finite number"),
        ("timeout_s = -inf", "upstream.timeout_s: Input should be a finite number"),
        ("timeout_s = -1", "upstream.timeout_s: Input should be greater than or equal to 0.1"),
        ("timeout_s = 0", "upstream.timeout_s: Input should be greater than or equal to 0.1"),
        ("timeout_s = 1e9", "upstream.timeout_s: Input should be less than or equal to 3600"),
        ("heartbeat_s = 1e-9", "upstream.heartbeat_s: Input should be greater than or equal to 1"),
        ("heartbeat_s = 1e308", "upstream.heartbeat_s: Input should be less than or equal"),
        ("auth_retry_s = inf", "upstream.auth_retry_s: Input should be a finite number"),
        ("backoff_max_s = 1e6", "upstream.backoff_max_s: Input should be less than or equal"),
        ("batch_max = inf", "upstream.batch_max"),
    ],
)
def test_numbers_must_be_finite_and_bounded(tmp_path: Path, line: str, expected: str) -> None:
    path = write(tmp_path, BASE + line + "\n")
    assert f"{path}: {expected}" in refused(path)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:99999/agent/v1", "upstream.url: not a usable URL"),
        ("http://127.0.0.1:8780/a b", "upstream.url: contains whitespace"),
        ("http://[::1/agent/v1", "upstream.url: "),
    ],
)
def test_urls_the_client_would_refuse_are_refused_at_load(
    tmp_path: Path, url: str, expected: str
) -> None:
    path = write(tmp_path, BASE.replace("http://127.0.0.1:8780/agent/v1", url))
    assert f"{path}: {expected}" in refused(path)


def test_nonfinite_numbers_elsewhere(tmp_path: Path) -> None:
    reassembly = write(tmp_path, BASE.replace('id = "t"', 'id = "t"\nreassembly_timeout_s = inf'))
    assert "agent.reassembly_timeout_s: Input should be a finite number" in refused(reassembly)
    device = write(tmp_path, BASE + '[[devices]]\nname = "a"\ndriver = "simulated"\npoll_ms = nan')
    assert f"{device}: devices[0].poll_ms: Input should be a finite number" in refused(device)


def test_nul_characters_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace('state_dir = "{state}"', 'state_dir = "/var/\\u0000lib"'))
    assert f"{path}: agent.state_dir: contains a NUL character" in refused(path)


def test_unusable_ca_file_is_refused_by_check_too(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    path = write(tmp_path, BASE + f'ca_file = "{ca}"\n')
    out = refused(path)
    assert f"{path}: upstream.ca_file: {ca} is not a usable CA bundle" in out
    with pytest.raises(ConfigError, match="upstream.ca_file"):
        load_config(path, environ=NO_ENV, require_key=False)


SECTIONS = ["agent", "upstream", "admin", "log", "devices", "sims", "number_discovery", "nope"]
KEYS = ["id", "url", "api_key", "api_key_file", "timeout_s", "listen", "level", "name", "driver"]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["simulated", "at", "sk-key ", "127.0.0.1:1", "http://127.0.0.1/x"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.dictionaries(st.sampled_from(SECTIONS), VALUES, max_size=5),
    environ=st.dictionaries(
        st.builds(
            lambda s, k: f"VSIM_{s.upper()}{'__' + k.upper() if k else ''}",
            st.sampled_from(SECTIONS),
            st.sampled_from(["", *KEYS]),
        ),
        st.text(max_size=12).filter(lambda v: "\x00" not in v)
        | st.sampled_from(["{", "[]", '{"id": "x"}', "inf", '[{"name": "a"}]']),
        max_size=3,
    ),
)
def test_any_input_is_a_config_or_a_config_error(
    data: dict[str, Any], environ: dict[str, str]
) -> None:
    """Whatever the data and the environment, loading gives a Config or a ConfigError (exit 2),
    never another exception (a traceback, exit 1)."""
    try:
        load_config(None, data=data, environ=environ, require_key=False)
    except ConfigError as exc:
        assert len(str(exc)) < (MAX_LINES + 1) * 420


@pytest.mark.parametrize(
    ("listen", "ok"),
    [
        ("127.0.0.1:9108", True),
        ("[::1]:9108", True),
        ("localhost:0", True),
        ("admin.farm-3.example:9108", True),
        ("хост:9108", False),
        ("a b:9108", False),
        ("127.0.0.1:65536", False),
    ],
)
def test_admin_listen_must_be_bindable_in_form(tmp_path: Path, listen: str, ok: bool) -> None:
    path = write(tmp_path, BASE + f"[admin]\nlisten = {toml_str(listen)}\n")
    if ok:
        assert load_config(path, environ=NO_ENV).settings.admin.listen == listen
    else:
        assert f"{path}: admin.listen: " in refused(path)


def test_driver_credentials_are_not_echoed_in_type_errors() -> None:
    """A device key named like a credential is masked like the API key (drivers own the
    models; this is the formatting rule they all go through)."""
    from pydantic import BaseModel, ValidationError

    from agent.config import _format

    class Line(BaseModel):
        password: int

    with pytest.raises(ValidationError) as err:
        Line.model_validate({"password": "hunter2-" + SECRET_PART})
    lines = _format(lambda loc: "f.toml", err.value, ("devices", 0))
    assert lines[0].startswith("f.toml: devices[0].password: Input should be a valid integer")
    assert SECRET_PART not in lines[0]


def test_device_credentials_are_not_in_the_config_repr() -> None:
    """Invariant 8: a gateway line's password never shows in repr() of the loaded config (a
    log line or a traceback that prints the config must not carry it)."""
    cfg = load_config(
        None,
        data={
            "upstream": {"api_key": "k"},
            "devices": [
                {
                    "name": "g",
                    "driver": "goip",
                    "listen": "127.0.0.1:0",
                    "lines": [{"id": "a", "password": "supersecret-line-pw"}],
                }
            ],
        },
    )
    assert "supersecret-line-pw" not in repr(cfg)
    assert "supersecret-line-pw" not in repr(cfg.devices)
