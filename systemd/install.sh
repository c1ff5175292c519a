#!/usr/bin/env bash
# Install or uninstall vsim-agent as a systemd service.  Called by `make install` /
# `make uninstall`; readable on its own, and idempotent: every step compares before it writes,
# reports created / updated / unchanged / skipped, and a second run reports "0 changed".
#
# Usage: systemd/install.sh install|uninstall
#
# Environment (the Makefile passes its variables of the same names):
#   DESTDIR     staging root (empty: this host).  With DESTDIR set nothing outside it is
#               touched: no user is created, systemctl and modprobe are not run.
#   PREFIX      where the venv lives                      (/opt/vsim-agent)
#   SYSCONFDIR  config directory parent                   (/etc)
#   UNITDIR     unit file directory                       (/etc/systemd/system)
#   DOCDIR      docs and the udev rule example            (/usr/share/doc/vsim-agent)
#   LIBDIR      sysusers.d and modules-load.d parent      (/usr/lib)
#   PYTHON      interpreter for the venv (3.11+)          (python3)
#   PIP_ARGS    extra pip arguments, e.g. an offline wheelhouse:
#               PIP_ARGS="--no-index --find-links /srv/wheels"
#   SKIP_VENV=1 skip the venv and pip (tests: building a wheel needs PyPI; see docs)
#
# What install creates, and uninstall removes:
#   $PREFIX/venv                      the package installed non-editable from this tree
#   $UNITDIR/vsim-agent.service        ExecStart rewritten to $PREFIX
#   $LIBDIR/sysusers.d/vsim-agent.conf the service user, declared for systemd-sysusers
#   $LIBDIR/modules-load.d/vsim-agent.conf  usbserial + cdc_acm at boot (see the file)
#   $DOCDIR/                          operations.md, 99-vsim-modems.rules, config.example.toml
# What install creates only if absent, and uninstall keeps:
#   $SYSCONFDIR/vsim-agent/config.toml   from config.example.toml, 0640 root:vsim-agent
#   $SYSCONFDIR/vsim-agent/api_key       empty, 0600 root (read by systemd: LoadCredential=)
#   the vsim-agent user and /var/lib/vsim-agent (the store): created by systemd, kept.
set -euo pipefail

ACTION=${1:-}
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DESTDIR=${DESTDIR:-}
DESTDIR=${DESTDIR%/}
PREFIX=${PREFIX:-/opt/vsim-agent}
SYSCONFDIR=${SYSCONFDIR:-/etc}
UNITDIR=${UNITDIR:-/etc/systemd/system}
DOCDIR=${DOCDIR:-/usr/share/doc/vsim-agent}
LIBDIR=${LIBDIR:-/usr/lib}
PYTHON=${PYTHON:-python3}
PIP_ARGS=${PIP_ARGS:-}
SKIP_VENV=${SKIP_VENV:-}

VENV=$PREFIX/venv
CONFDIR=$SYSCONFDIR/vsim-agent
STAMP=.vsim-agent-source  # in the venv: fingerprint of what was installed into it
changed=0
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

say() { printf '  %-9s %s\n' "$1" "$2"; }
did() { say "$1" "$2"; changed=$((changed + 1)); }

# put SRC DEST MODE: install a file unless DEST already has the same content and mode.
put() {
    local src=$1 dest=$DESTDIR$2 mode=$3
    if [[ -f $dest ]] && cmp -s "$src" "$dest" && [[ $(stat -c %a "$dest") == "${mode#0}" ]]; then
        say unchanged "$2"
        return
    fi
    local verb=created
    [[ -e $dest ]] && verb=updated
    install -D -m "$mode" "$src" "$dest"
    did "$verb" "$2"
}

# dir PATH MODE: a directory with this mode.
dir() {
    local dest=$DESTDIR$1 mode=$2
    if [[ -d $dest ]] && [[ $(stat -c %a "$dest") == "${mode#0}" ]]; then
        return
    fi
    install -d -m "$mode" "$dest"
    did created "$1/"
}

PACKAGE_FILES=(pyproject.toml README.md agent drivers)

# package_files: NUL-separated list of the files pip builds the package from.
package_files() {
    (
        cd "$SRC"
        for f in "${PACKAGE_FILES[@]}"; do
            [[ -e $f ]] && find "$f" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0
        done
    ) | LC_ALL=C sort -z
}

# The fingerprint of what pip would install: sources, metadata, interpreter and pip args.
# Unchanged fingerprint = nothing to do, so a second run neither rebuilds nor touches the venv.
source_fingerprint() {
    {
        "$PYTHON" --version
        printf '%s\n' "$PIP_ARGS"
        package_files | (cd "$SRC" && xargs -0 sha256sum)
    } | sha256sum | cut -d' ' -f1
}

install_venv() {
    if [[ -n $SKIP_VENV ]]; then
        say skipped "$VENV (SKIP_VENV set)"
        return
    fi
    local venv=$DESTDIR$VENV fingerprint
    fingerprint=$(source_fingerprint)
    if [[ -f $venv/$STAMP ]] && [[ $(<"$venv/$STAMP") == "$fingerprint" ]]; then
        say unchanged "$VENV"
        return
    fi
    local verb=updated
    if [[ ! -x $venv/bin/python ]]; then
        "$PYTHON" -m venv "$venv"
        verb=created
    fi
    # Build from a clean copy of exactly the fingerprinted files: setuptools builds in-tree and
    # would otherwise leave build/ in the checkout, whose stale modules leak into later builds.
    mkdir -p "$WORK/src"
    package_files | (cd "$SRC" && xargs -0 cp --parents -t "$WORK/src")
    # `python -m pip`, not bin/pip: after a staged install the scripts' #! lines point at the
    # target path, which does not exist on the staging host.
    # shellcheck disable=SC2086  # PIP_ARGS is a list of words
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
        --upgrade $PIP_ARGS "$WORK/src"
    if [[ -n $DESTDIR ]]; then
        # A venv records its own path in its scripts.  Staged under DESTDIR, that path must be
        # the target's, so the tree works once copied to / (as packagers do for venvs).
        grep -rlF --null "$venv" "$venv/bin" "$venv/pyvenv.cfg" | xargs -0 -r sed -i "s|$venv|$VENV|g"
    fi
    printf '%s\n' "$fingerprint" >"$venv/$STAMP"
    did "$verb" "$VENV (vsim-agent from $SRC)"
}

render_unit() {
    # ExecStart follows PREFIX; everything else is installed as written.
    sed "s|/opt/vsim-agent/venv|$VENV|g" "$SRC/systemd/vsim-agent.service"
}

ensure_user() {
    if [[ -n $DESTDIR ]]; then
        say skipped "user vsim-agent (DESTDIR set: systemd-sysusers creates it on the target)"
        return
    fi
    if getent passwd vsim-agent >/dev/null; then
        say unchanged "user vsim-agent"
        return
    fi
    if command -v systemd-sysusers >/dev/null; then
        systemd-sysusers "$LIBDIR/sysusers.d/vsim-agent.conf"
    else
        useradd --system --user-group --home-dir /var/lib/vsim-agent --no-create-home \
            --shell /usr/sbin/nologin --comment "vsim-agent SIM-farm daemon" vsim-agent
    fi
    did created "user vsim-agent"
}

install_config() {
    dir "$CONFDIR" 0755
    local config=$DESTDIR$CONFDIR/config.toml
    if [[ -e $config ]]; then
        say kept "$CONFDIR/config.toml (never overwritten)"
    elif [[ -f $SRC/config.example.toml ]]; then
        install -m 0640 "$SRC/config.example.toml" "$config"
        # The service reads its config as vsim-agent; nobody else needs to.
        if [[ -z $DESTDIR ]] && getent group vsim-agent >/dev/null; then
            chgrp vsim-agent "$config"
        fi
        did created "$CONFDIR/config.toml (from config.example.toml: edit it)"
    else
        say skipped "$CONFDIR/config.toml (no config.example.toml in $SRC)"
    fi
    local key=$DESTDIR$CONFDIR/api_key
    if [[ -e $key ]]; then
        say kept "$CONFDIR/api_key"
        if [[ $(stat -c %a "$key") != 600 ]]; then
            echo "warning: $key is mode $(stat -c %a "$key"), expected 600" >&2
        fi
    else
        # Created empty with its final mode, so there is no window where a key is readable.
        (umask 077 && : >"$key")
        did created "$CONFDIR/api_key (empty, 0600: put the hub API key in it)"
    fi
}

systemd_reload_enable() {
    if [[ -n $DESTDIR ]]; then
        say skipped "systemctl daemon-reload/enable, modprobe (DESTDIR set)"
        return
    fi
    # Load the serial drivers now, so DeviceAllow=char-ttyUSB resolves without a reboot.
    modprobe -a usbserial cdc_acm 2>/dev/null || echo "note: modprobe usbserial cdc_acm failed" >&2
    systemctl daemon-reload
    if systemctl is-enabled --quiet vsim-agent 2>/dev/null; then
        say unchanged "vsim-agent.service enabled"
    else
        systemctl enable --quiet vsim-agent
        did enabled "vsim-agent.service (not started: edit the config and api_key first)"
    fi
}

do_install() {
    echo "Installing vsim-agent into ${DESTDIR:-/}"
    install_venv
    render_unit >"$WORK/vsim-agent.service"
    put "$WORK/vsim-agent.service" "$UNITDIR/vsim-agent.service" 0644
    put "$SRC/systemd/vsim-agent.sysusers" "$LIBDIR/sysusers.d/vsim-agent.conf" 0644
    put "$SRC/systemd/vsim-agent.modules" "$LIBDIR/modules-load.d/vsim-agent.conf" 0644
    put "$SRC/systemd/99-vsim-modems.rules" "$DOCDIR/99-vsim-modems.rules" 0644
    for doc in docs/operations.md config.example.toml; do
        if [[ -f $SRC/$doc ]]; then
            put "$SRC/$doc" "$DOCDIR/$(basename "$doc")" 0644
        fi
    done
    ensure_user
    install_config
    systemd_reload_enable
    echo "install: $changed changed"
}

# gone PATH: remove a file or an empty directory we created, if present.
gone() {
    local dest=$DESTDIR$1
    if [[ -d $dest && ! -L $dest ]]; then
        if rmdir "$dest" 2>/dev/null; then
            did removed "$1/"
        fi
    elif [[ -e $dest || -L $dest ]]; then
        rm -f "$dest"
        did removed "$1"
    fi
}

do_uninstall() {
    echo "Uninstalling vsim-agent from ${DESTDIR:-/}"
    if [[ -z $DESTDIR ]] && systemctl cat vsim-agent.service >/dev/null 2>&1; then
        systemctl disable --now --quiet vsim-agent || true
        did stopped "vsim-agent.service (disabled)"
    fi
    local venv=$DESTDIR$VENV
    if [[ -d $venv ]]; then
        # Only ever delete something that is recognisably our venv.
        if [[ -f $venv/pyvenv.cfg ]] && [[ -f $venv/$STAMP || -x $venv/bin/vsim-agent ]]; then
            rm -rf "$venv"
            did removed "$VENV"
        else
            echo "warning: $venv does not look like vsim-agent's venv; left alone" >&2
        fi
    fi
    gone "$PREFIX"
    gone "$UNITDIR/vsim-agent.service"
    gone "$LIBDIR/sysusers.d/vsim-agent.conf"
    gone "$LIBDIR/modules-load.d/vsim-agent.conf"
    for doc in 99-vsim-modems.rules operations.md config.example.toml; do
        gone "$DOCDIR/$doc"
    done
    gone "$DOCDIR"
    if [[ -z $DESTDIR ]]; then
        systemctl daemon-reload
    fi
    say kept "$CONFDIR (config.toml, api_key), /var/lib/vsim-agent (the store), user vsim-agent"
    echo "uninstall: $changed changed"
}

case $ACTION in
install) do_install ;;
uninstall) do_uninstall ;;
*)
    echo "usage: $0 install|uninstall" >&2
    exit 2
    ;;
esac
