"""The ``vsim-agent`` command: run, check, demo, status, queue, store, hub, probe.

Only this module (the process entry point) installs signal handlers: SIGTERM and SIGINT set
the app's shutdown event.  Exit codes: 0 success, 1 runtime failure, 2 config or usage error
or a store the agent must not run on (agent/storecheck.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import structlog

from agent import __version__
from agent.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from agent.store import Store
from drivers.base import split_host_port

HARD_STOP_S = 9.5  # invariant 7: exit within 10 s of SIGTERM, whatever is still running


def _load(path: Path, *, require_key: bool = True) -> Config:
    try:
        return load_config(path, require_key=require_key)
    except ConfigError as exc:
        print(f"config error:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _install_signals(loop: asyncio.AbstractEventLoop, shutdown: asyncio.Event) -> None:
    def stop(signame: str) -> None:
        if shutdown.is_set():
            return
        shutdown.set()
        # A stuck driver call must not hold the service past systemd's stop timeout.  Exiting
        # hard is as safe as a crash: every commit is atomic and durable.
        timer = threading.Timer(HARD_STOP_S, lambda: os._exit(0))
        timer.daemon = True
        timer.start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig.name)


def cmd_run(args: argparse.Namespace) -> int:
    from agent import logs
    from agent.app import App
    from agent.store import StoreError

    config = _load(args.config)
    log_cfg = config.settings.log
    logs.configure(log_cfg.level, log_cfg.format, log_cfg.show_content)
    # From here on every line goes through the logger: JSON under journald.
    log = structlog.get_logger("agent.cli")
    for warning in config.warnings:
        log.warning("config warning", detail=warning)
    if not config.devices:
        log.warning("no [[devices]] configured; the agent will only talk to the hub")

    async def main() -> None:
        shutdown = asyncio.Event()
        loop = asyncio.get_running_loop()
        _install_signals(loop, shutdown)
        loop.set_exception_handler(logs.loop_exception_handler)
        await App(config).run(shutdown)

    try:
        asyncio.run(main())
    except StoreError as exc:
        # Restarting cannot fix it (the unit has RestartPreventExitStatus=2): say what can.
        print(f"store error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        log.error("cannot run", error=str(exc))
        return 1
    finally:
        logs.flush_streaks()
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config, require_key=False)
    for warning in config.warnings:
        print(f"warning: {warning}")
    print(f"{args.config}: OK")
    print(f"  agent id:   {config.agent.id}")
    print(f"  state dir:  {config.agent.state_dir}")
    print(
        f"  upstream:   {config.upstream.url} (signing {'on' if config.signing_secret else 'off'})"
    )
    print(f"  admin:      {config.settings.admin.listen}")
    for dev in config.devices:
        print(f"  device:     {dev.name} ({dev.config.driver})")
    return 0


def _fetch_status(config: Config) -> dict[str, Any]:
    host, port = split_host_port(config.settings.admin.listen)
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    url = f"http://{host}:{port}/status"
    try:
        response = httpx.get(url, timeout=5)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        print(f"cannot reach the running agent at {url}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    return data


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(h) for h in header]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def cmd_status(args: argparse.Namespace) -> int:
    config = _load(args.config, require_key=False)
    st = _fetch_status(config)
    if args.json:
        print(json.dumps(st, indent=1, ensure_ascii=False))
        return 0
    a, hub, ob = st["agent"], st["hub"], st["outbox"]
    print(f"agent {a['id']} v{a['version']}  pid {a['pid']}  up {_age(a['uptime_s'])}")
    hub_state = (
        "AUTH FAILED"
        if hub["auth_failed"]
        else ("ok" if not hub["last_error"] else f"retrying: {hub['last_error']}")
    )
    print(f"hub   {hub['url']}  {hub_state}")
    print(
        f"queue {ob['depth']} waiting (oldest {_age(ob['oldest_age_s'])}), "
        f"{ob['dead_letters']} dead letters, {ob['reassembly_pending_parts']} parts pending"
    )
    store = st.get("store") or {}
    if store and not store.get("writable", True):
        print(f"store {store['path']}  CANNOT WRITE ({store['error']}) since {store['since']}")
    for incident in store.get("incidents", []):
        print(f"store DAMAGED AT START: {incident['message']}  (vsim-agent store ack)")
    for d in st["devices"]:
        health = "up" if d["up"] else f"DOWN: {d['reason']}"
        print(f"device {d['name']} ({d['driver']}): {health}")
    now = time.time()
    rows = []
    for s in st["sims"]:
        last = s.get("last_sms_at")
        ago = None
        if last:
            ago = _age(now - datetime.fromisoformat(last).timestamp()) + " ago"
        rows.append(
            [
                s["port"],
                s.get("slot"),
                s["sim_id"],
                "esim" if s.get("kind") == "esim" else None,
                s["number"],
                s["state"],
                s["signal_dbm"],
                s["sms_count"],
                ago,
            ]
        )
    print()
    print(
        format_table(
            rows, ["PORT", "SLOT", "ICCID", "KIND", "NUMBER", "STATE", "DBM", "SMS", "LAST SMS"]
        )
    )
    online = sum(1 for s in st["sims"] if s["state"] == "online")
    standby = sum(1 for s in st["sims"] if s["state"] == "standby")
    print(f"\n{online}/{len(st['sims'])} SIMs online" + (f", {standby} standby" if standby else ""))
    return 0


def _open_store(args: argparse.Namespace) -> Store | None:
    """The agent's store for a CLI command (alongside a running agent: WAL), or None with a
    message when there is none yet."""
    from agent.store import Store

    config = _load(args.config, require_key=False)
    db = config.agent.state_dir / "agent.db"
    if not db.exists():
        print(f"no store at {db}", file=sys.stderr)
        return None
    return Store(db)


def cmd_queue(args: argparse.Namespace) -> int:
    store = _open_store(args)
    if store is None:
        return 1
    try:
        if args.action == "list":
            depth, oldest = store.outbox_stats()
            print(
                f"outbox: {depth} waiting, oldest {_age(time.time() - oldest if oldest else None)}"
            )
            dead = store.dead_letters()
            print(f"dead letters: {len(dead)}")
            if dead:
                rows = []
                for d in dead:
                    body = json.loads(d.body)
                    rows.append(
                        [
                            d.id,
                            d.iccid,
                            body.get("from"),
                            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.dead_at)),
                            d.attempts,
                            d.reason[:60],
                        ]
                    )
                print(format_table(rows, ["ID", "SIM", "FROM", "DEAD AT", "TRIES", "REASON"]))
        else:
            ids = None if args.all else args.ids
            if not ids and not args.all:
                print("name message ids or use --all", file=sys.stderr)
                return 2
            moved = store.resend_dead(ids)
            print(
                f"{moved} message(s) moved back to the outbox; a running agent sends them "
                "within a second"
            )
    finally:
        store.close()
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    """``store ack``: the operator has dealt with the damaged stores moved aside at start."""
    store = _open_store(args)
    if store is None:
        return 1
    try:
        for incident in store.incidents():
            print(
                f"acknowledged: {incident.get('file')}: {incident.get('reason')}"
                f" (moved to {incident.get('moved_to')})"
            )
        n = store.ack_incidents()
    finally:
        store.close()
    print(f"{n} incident(s) acknowledged; the moved-aside files are left where they are")
    return 0


def cmd_hub(args: argparse.Namespace) -> int:
    from agent import logs
    from agent.hub import HubConfig, run_hub

    logs.configure("info", "auto")
    host, port = split_host_port(args.listen)
    config = HubConfig(
        agent_keys={args.agent_key},
        customer_key=args.customer_key,
        signing_secret=args.signing_secret,
    )

    async def main() -> None:
        shutdown = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, shutdown.set)
        print(
            f"reference hub on http://{host}:{port}  agent API /agent/v1  "
            f"customer API /api/<method>/{args.customer_key}",
            flush=True,
        )
        await run_hub(config, host, port, shutdown=shutdown)

    asyncio.run(main())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo

    code: int = run_demo(duration=args.duration, sims=args.sims, rate=args.rate)
    return code


def cmd_probe(args: argparse.Namespace) -> int:
    """``probe PORT``: an AT modem; ``probe http://…``: an Ejoin / Skyline gateway.  Both read
    only; the exit status is 1 when the device cannot be identified."""
    from agent import logs

    # The table is the output; the wire trace only with --debug (to stderr).
    logs.configure("debug" if args.debug else "warning", "console")
    if args.port.startswith(("http://", "https://")):
        return _probe_gateway(args)
    from drivers.at.probe import format_probe, probe

    try:
        result = asyncio.run(probe(args.port, args.baudrate))
    except Exception as exc:
        print(f"probe failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(format_probe(result))
    if result.get("error"):
        print(f"probe failed: {result['error']}", file=sys.stderr)
        return 1
    return 0


def _probe_gateway(args: argparse.Namespace) -> int:
    from drivers.base import DriverError
    from drivers.ejoin.probe import probe as probe_ejoin

    password = args.password or ""
    if args.password_file is not None:
        try:
            password = args.password_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            print(f"probe failed: --password-file: {exc.__class__.__name__}", file=sys.stderr)
            return 2
    try:
        result = asyncio.run(probe_ejoin(args.port, args.username, password))
    except DriverError as exc:
        print(f"probe failed: {exc}", file=sys.stderr)
        return 1
    rows = [
        ["driver", "ejoin (Ejoin / Skyline HTTP API)"],
        ["model", result["model"]],
        ["firmware", result["firmware"]],
        ["MAC", result["mac"]],
        ["ports", result["ports"]],
        ["slots per port", result["slots"]],
        ["eSIM ports", ", ".join(map(str, result["esim_ports"])) or "-"],
        ["SIMs present", result["sims"]],
        ["selected", result["selected"]],
        ["registered", result["registered"]],
    ]
    print(format_table(rows, ["FIELD", "VALUE"]))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vsim-agent", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"vsim-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument(
            "-c",
            "--config",
            type=Path,
            default=DEFAULT_CONFIG_PATH,
            help=f"config file (default {DEFAULT_CONFIG_PATH})",
        )
        return sp

    with_config(sub.add_parser("run", help="run the agent")).set_defaults(fn=cmd_run)
    with_config(sub.add_parser("check", help="validate a config file")).set_defaults(fn=cmd_check)
    sp = with_config(sub.add_parser("status", help="SIMs and queue of the running agent"))
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_status)
    sp = with_config(sub.add_parser("queue", help="list or re-send dead letters"))
    sp.add_argument("action", choices=["list", "resend"])
    sp.add_argument("ids", nargs="*", help="message ids to re-send")
    sp.add_argument("--all", action="store_true", help="re-send every dead letter")
    sp.set_defaults(fn=cmd_queue)
    sp = with_config(sub.add_parser("store", help="acknowledge damaged stores moved aside"))
    sp.add_argument("action", choices=["ack"])
    sp.set_defaults(fn=cmd_store)
    sp = sub.add_parser("hub", help="run the reference hub")
    sp.add_argument("--listen", default="127.0.0.1:8780")
    sp.add_argument("--agent-key", default="demo-key")
    sp.add_argument("--customer-key", default="customer-key")
    sp.add_argument("--signing-secret", default=None)
    sp.set_defaults(fn=cmd_hub)
    sp = sub.add_parser("demo", help="reference hub + simulated SIMs, live view")
    sp.add_argument("--duration", type=float, default=None, help="end after S seconds")
    sp.add_argument("--sims", type=int, default=16)
    sp.add_argument("--rate", type=float, default=3.0, help="SMS per second")
    sp.set_defaults(fn=cmd_demo)
    sp = sub.add_parser("probe", help="identify an AT modem or an Ejoin/Skyline gateway")
    sp.add_argument(
        "port",
        help="/dev/serial/by-id/..., socket://host:port, rfc2217://... or a gateway's http://...",
    )
    sp.add_argument("--baudrate", type=int, default=115200)
    sp.add_argument("--username", default="root", help="gateway web user (default root)")
    sp.add_argument(
        "--password-file", type=Path, default=None, help="file holding the gateway password"
    )
    sp.add_argument(
        "--password", default=None, help="gateway password (visible in ps: prefer the file)"
    )
    sp.add_argument("--debug", action="store_true", help="show the AT wire trace on stderr")
    sp.set_defaults(fn=cmd_probe)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code: int = args.fn(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
