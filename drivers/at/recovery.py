"""The hang ladder of a port: AT ping -> reopen -> AT+CFUN=1,1 -> ``reset_command``.

Owns: how far up the ladder a hang goes (one rung further for each hang not followed by a
healthy poll or sweep), the per-hour cap on destructive resets, and running the configured
power-cycle command with a timeout.  Reports each rung as ``DeviceStat("hang_step", n)``.
Must not: decide that a modem hangs (an :class:`AtTimeout` reaching the supervisor does).
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import time

import structlog

from drivers.at import commands as c
from drivers.at.framing import AtCommandError, AtError, AtTimeout, PortClosed
from drivers.at.port_base import PortBase, PortState
from drivers.base import DeviceStat

log = structlog.get_logger(__name__)

RESET_SETTLE_S = 10.0  # after AT+CFUN=1,1 / reset_command: USB re-enumeration, SIM init


class Recovery(PortBase):
    async def _hang_ladder(self, exc: AtTimeout) -> bool:
        """Climb one rung further for each hang not followed by a healthy poll or sweep.

        True when the modem answers again on an open port (init runs again); False to back
        off and reconnect.  A modem that answers ``AT`` but hangs on one command (Huawei's
        ``CMGL`` "black hole", Gammu #4) is caught by the escalation, not by the ping.
        """
        self.state = PortState.RECOVERING
        self._failure("modem not answering", exc)
        self._hang_episodes += 1
        level = self._hang_episodes
        if level == 1:
            self._step(1, "ping")
            if await self._ping():
                return True
        if level <= 2:
            self._step(2, "reopen")
            await self.close_port()
            try:
                await self.open()
            except PortClosed:
                return False  # the device is gone: an unplug, handled by reconnecting
            if await self._ping():
                return True
        if not self._reset_allowed():
            self._step(5, "wait")  # max_resets_per_hour spent: keep reopening with backoff
            return False
        if level >= 4 and self.settings.reset_command:
            self._step(4, "reset_command")
            await self._drop("power cycle")
            await self._run_reset_command()
        else:
            self._step(3, "cfun_reset")
            if self._protocol is not None:
                with contextlib.suppress(AtError):
                    await self._protocol.command(
                        self.modem.quirks.reset_command, timeout_s=c.TIMEOUTS["quick"]
                    )
            await self._drop("modem reset")
            self._hang_episodes = max(level, 3)
        await asyncio.sleep(RESET_SETTLE_S)
        return False

    def _step(self, step: int, name: str) -> None:
        log.debug("at.hang_step", port=self.name, step=name)
        self._emit(DeviceStat("hang_step", step, port=self.name, labels=(("step", name),)))

    async def _ping(self) -> bool:
        if self._protocol is None:
            return False
        try:
            await self._protocol.command("AT", timeout_s=c.TIMEOUTS["quick"])
            return True
        except AtCommandError:
            return True  # an answer is an answer
        except AtError:
            return False

    def _reset_allowed(self) -> bool:
        now = time.monotonic()
        while self._resets and now - self._resets[0] > 3600:
            self._resets.popleft()
        if len(self._resets) >= self.settings.max_resets_per_hour:
            return False
        self._resets.append(now)
        return True

    async def _run_reset_command(self) -> None:
        """Run ``reset_command`` (a USB hub power cycle, say) with a timeout; never raises."""
        command = self.settings.reset_command or ""
        # Plain replacement, not str.format: shell text such as ${VAR} must pass untouched.
        for key, value in (
            ("{port}", shlex.quote(self.settings.url)),
            ("{index}", str(self.settings.index)),
            ("{device}", shlex.quote(self.settings.device)),
        ):
            command = command.replace(key, value)
        try:
            proc = await asyncio.create_subprocess_shell(
                command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
        except OSError as exc:
            log.warning("at.reset_command_failed", port=self.name, error=str(exc))
            return
        try:
            async with asyncio.timeout(self.settings.reset_timeout_s):
                _, err = await proc.communicate()
            level = log.info if proc.returncode == 0 else log.warning
            stderr = err[-200:].decode(errors="replace")
            level("at.reset_command", port=self.name, rc=proc.returncode, stderr=stderr)
        except TimeoutError:
            log.warning("at.reset_command_timeout", port=self.name)
        finally:
            if proc.returncode is None:  # timed out, or we are being cancelled
                proc.kill()
                await proc.wait()
