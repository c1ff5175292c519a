"""``vsim-agent demo``: the reference hub and an agent with simulated SIMs, live in the terminal.

Everything runs in this process on loopback with a temporary state directory: the hub on a free
port, the real :class:`agent.app.App` with two simulated SIM banks, a traffic generator that
sends verification-code SMS in several languages (some multipart, some arriving out of order)
into the simulated network, and a "customer" who rents numbers through the platform's public API
(``getnumber`` → SMS → ``getstatus`` with the code) and switches a rented SIM off and on again
(``send-disable-sim`` / ``send-enable-sim``).  The screen shows SIMs and their states, messages
as the hub received them with their codes, and the queue.  Ctrl-C ends it cleanly;
``--duration S`` ends it by itself.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from contextlib import suppress
from pathlib import Path
from typing import Any, Literal

import httpx

from agent import logs
from agent.app import App
from agent.config import load_config
from agent.hub import HubConfig, HubState, run_hub
from agent.hub.customer_api import extract_code
from drivers.simulated import SimNetwork

GATEWAY = "gw1"

CUSTOMER_KEY = "demo-customer"
AGENT_KEY = "demo-key"

#: (sender, template): realistic verification texts in the platform's usual languages.
TEMPLATES: tuple[tuple[str, str], ...] = (
    ("VKcom", "VK: {c} - ваш код для регистрации ВКонтакте."),
    ("Telegram", "Telegram code: {c}\n\nYou can also tap on this link to log in."),
    ("Google", "G-{c} is your Google verification code."),
    ("WhatsApp", "Your WhatsApp code: {c3}-{c3b}\nDon't share this code with others"),
    ("Uber", "Tu código de Uber es {c}. Nunca lo compartas."),
    ("Amazon", "{c} ist dein Amazon-Bestätigungscode. Teile ihn mit niemandem."),
    ("Shopee", "Kode verifikasi Shopee Anda: {c}. JANGAN BERIKAN kode ini kepada siapa pun."),
    ("Taobao", "【淘宝】验证码{c}，您正在登录，若非本人操作，请勿泄露。"),
    ("OZON", "🔐 Ваш код для входа в Ozon: {c}. Никому его не сообщайте 🙂"),
    (
        "Kaspi.kz",
        "Kaspi.kz: код подтверждения {c}. Никому не сообщайте этот код, даже "
        "сотрудникам банка. Если вы не запрашивали код, позвоните по номеру 9999 и заблокируйте "
        "доступ к приложению.",
    ),
    (
        "900",
        "Sberbank Online: vhod v lichnyi kabinet. Kod podtverzhdeniya: {c}. Nikomu ne "
        "soobshchayte kod, dazhe sotrudniku banka. Esli vy ne zaprashivali kod, pozvonite "
        "900 i zablokiruyte dostup. Eto soobshchenie mozhet byt razbito na chasti.",
    ),
)


def _text(rng: random.Random) -> tuple[str, str]:
    sender, tpl = rng.choice(TEMPLATES)
    return sender, tpl.format(
        c=f"{rng.randrange(10**4, 10**6)}",
        c3=f"{rng.randrange(100, 1000)}",
        c3b=f"{rng.randrange(100, 1000)}",
    )


class Demo:
    def __init__(self, sims: int, rate: float) -> None:
        self.sims = max(2, sims)
        self.rate = rate
        self.rng = random.Random()
        self.events: deque[str] = deque(maxlen=8)
        self._printed = 0  # events shown so far in line mode (not a TTY)
        self._count = 0
        self.sent = 0
        self.hub_state = HubState()
        self.rented: set[str] = set()  # numbers the customer holds: background traffic skips them
        self.app: App | None = None
        self.held = 0

    def _config(self, state_dir: Path, hub_url: str) -> dict[str, Any]:
        half = self.sims // 2
        return {
            "agent": {"id": "demo-farm", "state_dir": str(state_dir), "reassembly_timeout_s": 20},
            "upstream": {"url": f"{hub_url}/agent/v1", "api_key": AGENT_KEY, "heartbeat_s": 15},
            "admin": {"listen": "127.0.0.1:0"},
            "devices": [
                {"name": "bank-ru", "driver": "simulated", "sims": half, "country": "RU"},
                {
                    "name": "bank-kz",
                    "driver": "simulated",
                    "sims": self.sims - half,
                    "country": "KZ",
                },
                # An 8-port SIM-bank gateway, 4 slots a port, the last port an eUICC.
                {
                    "name": GATEWAY,
                    "driver": "simulated",
                    "sims": 32,
                    "slots": 4,
                    "esim_ports": 1,
                    "country": "RU",
                },
            ],
        }

    async def run(self, duration: float | None, shutdown: asyncio.Event) -> None:
        with tempfile.TemporaryDirectory(prefix="vsim-demo-") as tmp:
            state_dir = Path(tmp)
            hub_ready, hub_stop = asyncio.Event(), asyncio.Event()
            hub_cfg = HubConfig(agent_keys={AGENT_KEY}, customer_key=CUSTOMER_KEY)
            async with asyncio.TaskGroup() as tg:
                hub_task = tg.create_task(
                    run_hub(
                        hub_cfg,
                        "127.0.0.1",
                        0,
                        state=self.hub_state,
                        ready=hub_ready,
                        shutdown=hub_stop,
                    ),
                    name="demo:hub",
                )
                await hub_ready.wait()
                hub_url = self.hub_state.base_url
                config = load_config(None, data=self._config(state_dir, hub_url))
                self.app = App(config)
                agent_stop = asyncio.Event()
                agent_task = tg.create_task(self.app.run(agent_stop), name="demo:agent")
                await self.app.ready.wait()
                net = SimNetwork(state_dir / "simnet.db")
                self._event(f"hub on {hub_url}, agent '{config.agent.id}' ready")
                workers = [
                    tg.create_task(self._traffic(net), name="demo:traffic"),
                    tg.create_task(self._customer(net, hub_url), name="demo:customer"),
                    tg.create_task(self._screen(hub_url), name="demo:screen"),
                    tg.create_task(self._gateway(config.agent.id), name="demo:gateway"),
                ]
                with suppress(TimeoutError):
                    async with asyncio.timeout(duration):
                        await shutdown.wait()
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                agent_stop.set()
                await agent_task
                hub_stop.set()
                await hub_task
                self.held = net.stored()
                net.close()
        self._summary()

    async def _traffic(self, net: SimNetwork) -> None:
        numbers = list(net.numbers())
        while True:
            await asyncio.sleep(self.rng.expovariate(self.rate))
            sender, text = _text(self.rng)
            to = self.rng.choice([n for n in numbers if n not in self.rented] or numbers)
            # Half the multipart messages reach the SIM out of order, as on real networks.
            order: Literal["shuffle"] | None = "shuffle" if self.rng.random() < 0.5 else None
            await asyncio.to_thread(net.send, to, text, sender=sender, order=order)
            self.sent += 1

    async def _customer(self, net: SimNetwork, hub_url: str) -> None:
        api = f"{hub_url}/api"
        async with httpx.AsyncClient(timeout=10) as http:

            async def call(method: str, **params: str) -> Any:
                r = await http.get(f"{api}/{method}/{CUSTOMER_KEY}", params=params)
                return r.json()

            round_no = 0
            while True:
                await asyncio.sleep(4)
                round_no += 1
                country = "RU" if round_no % 2 else "KZ"
                got = await call("getnumber", id="vk", code=country)
                if not isinstance(got, dict) or "number" not in got:
                    self._event(f"customer: getnumber {country} → {got}")
                    continue
                number, act = got["number"], str(got["id"])
                self.rented.add(number)
                self._event(f"customer: rented {number} ({country}) activation {act}")
                t0 = time.monotonic()
                code = f"{self.rng.randrange(10**4, 10**6)}"
                await asyncio.to_thread(
                    net.send,
                    number,
                    f"VK: {code} - ваш код для регистрации ВКонтакте.",
                    sender="VKcom",
                )
                for _ in range(100):
                    st = await call("getstatus", id=act)
                    if isinstance(st, dict) and st.get("small"):
                        ms = (time.monotonic() - t0) * 1000
                        ok = "✓" if st["small"] == code else "✗"
                        self._event(
                            f"customer: getstatus {act} → code {st['small']} {ok} in {ms:.0f} ms"
                        )
                        break
                    await asyncio.sleep(0.1)
                if round_no % 3 == 0:
                    r = await call("send-disable-sim", id=act)
                    self._event(f"customer: send-disable-sim {number} → {r}")
                    await asyncio.sleep(3)
                    r = await call("send-enable-sim", id=act)
                    self._event(f"customer: send-enable-sim {number} → {r}")
                await call("setstatus", id=act, status="1")
                self.rented.discard(number)

    async def _command(self, kind: str, sim_id: str | None, **params: str) -> dict[str, Any]:
        """A command through the hub, as the platform sends it; its result (bounded wait)."""
        hub = self.hub_state
        cid = hub.enqueue_command(kind, sim_id, **params)
        for _ in range(300):
            if cid in hub.command_results:
                return dict(hub.command_results[cid])
            await asyncio.sleep(0.1)
        return {"ok": False, "error": "no result within 30 s"}

    async def _gateway(self, agent_id: str) -> None:
        """The platform working the SIM bank: a standby SIM is enabled every few seconds (its
        port switches slot and the SMS the network held for it arrive); now and then an eSIM
        profile is downloaded onto the eUICC and deleted again."""
        profile: str | None = None
        round_no = 0
        while True:
            await asyncio.sleep(6)
            round_no += 1
            with self.hub_state.lock:
                standby = [
                    s
                    for s in self.hub_state.sims.values()
                    if s.get("device") == GATEWAY
                    and s["state"] == "standby"
                    and s.get("kind") == "sim"
                ]
            if standby:
                sim = self.rng.choice(sorted(standby, key=lambda s: s["sim_id"]))
                r = await self._command("enable", sim["sim_id"])
                self._event(
                    f"platform: enable standby {sim['slot']} → {r.get('state') or r.get('error')}"
                )
            if round_no % 4 == 1 and profile is None:
                r = await self._command(
                    "esim_download",
                    None,
                    agent_id=agent_id,
                    device=GATEWAY,
                    activation_code=f"LPA:1$smdp.demo.example${round_no:04d}",
                )
                profile = r.get("sim_id") if r.get("ok") else None
                self._event(f"platform: esim_download → {profile or r.get('error')}")
            elif round_no % 4 == 3 and profile is not None:
                await self._command("disable", profile)
                r = await self._command("esim_delete", profile)
                self._event(f"platform: esim_delete {profile} → {'ok' if r['ok'] else r['error']}")
                profile = None

    async def _screen(self, hub_url: str) -> None:
        tty = sys.stdout.isatty()
        while True:
            await asyncio.sleep(0.5 if tty else 5)
            text = self._render(hub_url)
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
            else:
                new = self._count - self._printed
                for event in list(self.events)[-new:] if new else []:
                    sys.stdout.write(f"[demo] {event}\n")
                self._printed = self._count
                sys.stdout.write(self._line() + "\n")
            sys.stdout.flush()

    def _event(self, text: str) -> None:
        self.events.append(text)
        self._count += 1

    def _line(self) -> str:
        app = self.app
        assert app is not None
        return (
            f"[demo] sent {self.sent}  hub received {len(self.hub_state.messages)}  "
            f"{app.status_line()}"
        )

    def _render(self, hub_url: str) -> str:
        app = self.app
        assert app is not None and app.core is not None
        width = shutil.get_terminal_size((100, 30)).columns
        lines = [f"vsim-agent demo — hub {hub_url} — Ctrl-C to stop", self._line(), ""]
        sims = sorted(
            app.core.inventory.sims.values(), key=lambda s: (s.info.port, s.info.slot or "")
        )
        lines.append(
            f"{'PORT':<11}{'SLOT':<6}{'KIND':<5}{'NUMBER':<15}{'STATE':<9}{'DBM':>5}{'SMS':>6}"
        )
        for s in sims:
            lines.append(
                f"{s.info.port:<11}{s.info.slot or '-':<6}{s.info.kind.value:<5}"
                f"{s.number or '-':<15}{s.state:<9}"
                f"{s.info.signal_dbm if s.info.signal_dbm is not None else '-':>5}"
                f"{s.sms_count:>6}"
            )
        lines += ["", "Last messages at the hub (code = getstatus 'small'):"]
        with self.hub_state.lock:
            recent = sorted(self.hub_state.messages.values(), key=lambda m: m["received"])[-8:]
        for m in recent:
            body = m["body"]
            code = extract_code(body["text"])
            one = " ".join(body["text"].split())
            lines.append(
                f"  {body['number'] or '?':<14} {body['from']:<9} {code or '-':<7} "
                f"p{body['parts']} {one}"[: width - 1]
            )
        lines += ["", "Events:"] + [f"  {e}"[: width - 1] for e in self.events]
        return "\n".join(lines)

    def _summary(self) -> None:
        got = len(self.hub_state.messages)
        print(
            f"\ndemo finished: {self.sent} SMS sent by the traffic generator, "
            f"{got} messages received by the hub, duplicates absorbed by id: "
            f"{self.hub_state.duplicates}; SMS parts the network still holds for standby SIMs: "
            f"{self.held}"
        )


def run_demo(*, duration: float | None, sims: int = 16, rate: float = 3.0) -> int:
    logs.configure("warning", "console")
    demo = Demo(sims, rate)

    async def main() -> None:
        shutdown = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, shutdown.set)
        await demo.run(duration, shutdown)

    asyncio.run(main())
    return 0
