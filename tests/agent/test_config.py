"""Config loading: the example file, env overrides, secrets, and errors that name file and key."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config

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


def test_credential_with_trailing_newline_works(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api_key").write_text(SECRET + "\n")
    (creds / "signing_secret").write_text("whsec 1\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    path = with_upstream(tmp_path, "")
    with pytest.raises(ConfigError, match=r"credential signing_secret: .* contains whitespace"):
        load_config(path, environ=NO_ENV)
    (creds / "signing_secret").write_text("whsec-1\n")
    assert load_config(path, environ=NO_ENV).api_key.get_secret_value() == SECRET


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
