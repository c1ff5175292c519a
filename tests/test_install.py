"""`make install` / `make uninstall` into a staging root (DESTDIR), for real.

Offline and fast: SKIP_VENV=1 skips the one step that needs PyPI (pip building the package
needs setuptools>=68 from the index, and the dependencies).  That step is covered by
test_real_install_with_pypi, which runs when VSIM_NETWORK_TESTS=1 (about 30 s).
Everything else install.sh does runs here as it runs on a host.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HAS_EXAMPLE = (ROOT / "config.example.toml").is_file()


def make(target: str, destdir: Path, *args: str, timeout: float = 60) -> str:
    run = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), target, f"DESTDIR={destdir}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under root with its mode and, for files, content."""
    return {
        str(p.relative_to(root)): (p.stat().st_mode, p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def test_install_twice_then_uninstall(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    first = make("install", dest, "SKIP_VENV=1")
    assert "install: 0 changed" not in first

    unit = dest / "etc/systemd/system/vsim-agent.service"
    assert unit.read_text() == (ROOT / "systemd/vsim-agent.service").read_text()
    assert mode(unit) == 0o644
    key = dest / "etc/vsim-agent/api_key"
    assert key.read_bytes() == b""
    assert mode(key) == 0o600
    assert (dest / "usr/share/doc/vsim-agent/99-vsim-modems.rules").is_file()
    assert (dest / "usr/lib/sysusers.d/vsim-agent.conf").is_file()
    assert (dest / "usr/lib/modules-load.d/vsim-agent.conf").is_file()
    assert not (dest / "etc/udev").exists()  # the rule is an example: never activated
    assert not (dest / "opt/vsim-agent").exists()  # SKIP_VENV
    assert "skipped   user vsim-agent (DESTDIR set" in first
    assert "skipped   systemctl" in first
    config = dest / "etc/vsim-agent/config.toml"
    if HAS_EXAMPLE:
        assert config.read_bytes() == (ROOT / "config.example.toml").read_bytes()
        assert mode(config) == 0o640
        config.write_text("# edited by the operator\n")
    key.write_text("secret-key\n")
    before = tree(dest)

    second = make("install", dest, "SKIP_VENV=1")
    assert "install: 0 changed" in second, second
    assert tree(dest) == before  # nothing rewritten, edits kept
    assert key.read_text() == "secret-key\n"
    if HAS_EXAMPLE:
        assert config.read_text() == "# edited by the operator\n"

    out = make("uninstall", dest)
    assert "uninstall: 0 changed" not in out
    remaining = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    expected = ["etc/vsim-agent/api_key"] + (["etc/vsim-agent/config.toml"] if HAS_EXAMPLE else [])
    assert remaining == expected
    assert not (dest / "usr/share/doc/vsim-agent").exists()
    assert "uninstall: 0 changed" in make("uninstall", dest)


def test_prefix_moves_the_venv_and_execstart(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    make("install", dest, "SKIP_VENV=1", "PREFIX=/srv/vsim")
    unit = (dest / "etc/systemd/system/vsim-agent.service").read_text()
    assert "ExecStart=/srv/vsim/venv/bin/vsim-agent run -c /etc/vsim-agent/config.toml" in unit
    assert "/opt/vsim-agent" not in unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_installed_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` against the installed tree, as systemd would load it.

    With --root, verify resolves the unit's dependencies (sysinit.target, ...) and checks that
    ExecStart is executable under that root, so the root gets the host's system units and, for
    the venv SKIP_VENV left out, an executable at the ExecStart path.  verify exits 0 even on
    unknown keys (it prints them and ignores them), so any output is a failure.
    """
    dest = tmp_path / "root"
    make("install", dest, "SKIP_VENV=1")
    host_units = Path("/usr/lib/systemd/system")
    if not (host_units / "sysinit.target").exists():
        pytest.skip("no system units on this host to resolve dependencies against")
    shutil.copytree(host_units, dest / "usr/lib/systemd/system", symlinks=True)
    unit = dest / "etc/systemd/system/vsim-agent.service"

    def verify(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["systemd-analyze", "verify", f"--root={dest}", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )

    missing = verify(unit)  # no venv yet: the check must notice
    assert missing.returncode != 0
    assert "/opt/vsim-agent/venv/bin/vsim-agent is not executable" in missing.stderr

    exe = dest / "opt/vsim-agent/venv/bin/vsim-agent"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    ok = verify(unit)
    assert (ok.returncode, ok.stdout + ok.stderr) == (0, "")

    broken = unit.with_name("broken.service")
    broken.write_text(unit.read_text().replace("ProtectClock=", "ProtectClok="))
    assert "Unknown key 'ProtectClok'" in verify(broken).stderr


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers missing")
def test_sysusers_creates_the_service_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(ROOT / "systemd/vsim-agent.sysusers")],
        capture_output=True,
        check=True,
        timeout=30,
    )
    user = (tmp_path / "etc/passwd").read_text().split(":")
    assert user[0] == "vsim-agent"
    assert user[5:] == ["/var/lib/vsim-agent", "/usr/sbin/nologin\n"]
    assert (tmp_path / "etc/group").read_text().startswith("vsim-agent:")


@pytest.mark.skipif(
    os.environ.get("VSIM_NETWORK_TESTS") != "1",
    reason="builds the service venv from PyPI (~30 s); set VSIM_NETWORK_TESTS=1",
)
def test_real_install_with_pypi(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    first = make("install", dest, f"PYTHON={sys.executable}", timeout=600)
    assert "created   /opt/vsim-agent/venv" in first
    venv = dest / "opt/vsim-agent/venv"
    # Staged scripts point at the target path, so the tree is correct once copied to /.
    assert (venv / "bin/vsim-agent").read_text().startswith("#!/opt/vsim-agent/venv/bin/python")
    help_run = subprocess.run(
        [str(venv / "bin/python"), "-m", "agent.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert help_run.returncode == 0, help_run.stderr
    where = subprocess.run(
        [str(venv / "bin/python"), "-c", "import agent; print(agent.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=tmp_path,  # not the checkout, or `import agent` would find it there
    ).stdout
    assert where.startswith(str(venv))  # installed, not editable
    second = make("install", dest, f"PYTHON={sys.executable}", timeout=600)
    assert "unchanged /opt/vsim-agent/venv" in second
