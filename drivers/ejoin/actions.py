"""Actions that talk to the network through the box: AT pass-through (forwarding, USSD) and the
asynchronous eSIM operations, each ending in a result or a :class:`CommandError` with the
box's own reason.

* Forwarding and USSD go through ``goip_send_at.html?port=N&at=...`` (research/gateways.md
  section 1.5 [C/S]; section 11: not on every firmware, so a box without it answers an error
  that becomes the command's reason).  The module behind a port speaks for its *selected*
  SIM only, and a locked port refuses pass-through (field note, section 1.5).  Commands are
  TS 27.007 7.11 ``AT+CCFC=0,3,"<n>",145`` / ``AT+CCFC=0,4`` and 7.15 ``AT+CUSD=1,"<code>",15``,
  as the AT driver sends them.
* eSIM write/delete (section 1.8) are accepted at once and then run on the box: the profile
  slot shows ``op`` 1 (writing) / 2 (deleting) with ``status`` 1 submitted, 2 in progress, 3
  error (with ``reason``).  We poll ``goip_get_esims.html`` until the op is gone (done) or in
  error; a box that is briefly unreachable meanwhile does not fail the operation, only the
  overall deadline does.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping

from drivers.base import CommandError
from drivers.ejoin.client import EjoinClient, GatewayError
from drivers.ejoin.wire import WireError, leading_int, parse_esims

#: How long an eSIM download or delete may take on the box (SM-DP+ round trips included).
ESIM_TIMEOUT_S = 180.0
ESIM_POLL_S = 0.25
_CUSD_RE = re.compile(r'\+CUSD:\s*(\d+)\s*(?:,\s*"([^"]*)"\s*(?:,\s*(\d+))?)?')


async def send_at(client: EjoinClient, port: int, command: str, what: str) -> str:
    """Run one AT command on ``port``; returns the module's response or raises CommandError."""
    try:
        doc = await client.get("goip_send_at.html", port=port, at=command)
    except GatewayError as exc:
        raise CommandError(f"{what}: {exc}") from None
    if not isinstance(doc, dict):
        raise CommandError(f"{what}: the gateway's answer is not an object")
    code = leading_int(doc.get("code"))
    resp = doc.get("resp")
    if code not in (0, 200) or not isinstance(resp, str):
        reason = client.reason(doc.get("reason")) or f"code {code}"
        raise CommandError(f"{what} refused by the gateway: {reason}")
    lines = [ln.strip() for ln in resp.splitlines() if ln.strip()]
    if any("ERROR" in ln for ln in lines) or "OK" not in lines:
        reason = client.reason(" ".join(lines)) or "no answer"
        raise CommandError(f"{what} refused by the gateway: {reason}")
    return resp


async def set_forwarding(client: EjoinClient, port: int, to: str | None) -> None:
    if to is None:
        await send_at(client, port, "AT+CCFC=0,4", "call forwarding")
    else:
        toa = 145 if to.startswith("+") else 129  # TS 24.008 10.5.4.7
        await send_at(client, port, f'AT+CCFC=0,3,"{to}",{toa}', "call forwarding")


def _ucs2(text: str) -> str:
    try:
        return bytes.fromhex(text).decode("utf-16-be")
    except ValueError:
        return text


async def ussd(client: EjoinClient, port: int, code: str) -> str:
    if not re.fullmatch(r"[0-9*#+]{1,40}", code):
        raise CommandError(f"not a USSD code: {code!r}")
    resp = await send_at(client, port, f'AT+CUSD=1,"{code}",15', "USSD")
    m = _CUSD_RE.search(resp)
    if m is None:
        raise CommandError("USSD: the gateway returned no +CUSD reply")
    if m[2] is None or m[1] not in ("0", "1"):
        raise CommandError(f"USSD: the network answered +CUSD: {m[1]} (no text)")
    dcs = int(m[3]) if m[3] else 15
    return _ucs2(m[2]) if dcs == 72 else m[2]  # TS 23.038 clause 5: 72 = UCS2


async def esim_run(
    client: EjoinClient,
    kind: str,
    port: int,
    slot: int,
    body: Mapping[str, object],
    timeout_s: float = ESIM_TIMEOUT_S,
) -> str | None:
    """Start a write or delete and follow it; returns the written profile's ICCID (write) or
    None (delete).  Raises CommandError with the box's reason on refusal or error."""
    path = "goip_write_esims.html" if kind == "write" else "goip_delete_esims.html"
    what = "eSIM download" if kind == "write" else "eSIM delete"
    try:
        doc = await client.post(path, [dict(body)])
    except GatewayError as exc:
        raise CommandError(f"{what}: {exc}") from None
    code = leading_int(doc.get("code")) if isinstance(doc, dict) else None
    if code not in (0, 200):
        reason = client.reason(doc.get("reason")) if isinstance(doc, dict) else None
        raise CommandError(f"{what} refused by the gateway: {reason or f'code {code}'}")
    deadline = time.monotonic() + timeout_s
    last_error = "no answer"
    while time.monotonic() < deadline:
        await asyncio.sleep(ESIM_POLL_S)
        try:
            ports = parse_esims(await client.get("goip_get_esims.html", ports="all"), client.reason)
        except (GatewayError, WireError) as exc:
            last_error = str(exc)  # the box may be busy with the SM-DP+; keep following
            continue
        ep = ports.get(port)
        prof = ep.profiles.get(slot) if ep is not None else None
        if prof is not None and prof.status == 3:
            raise CommandError(f"{what} failed on the gateway: {prof.reason or 'error'}")
        if kind == "write":
            if prof is not None and prof.op == 0 and prof.iccid:
                return prof.iccid
        elif prof is None or (prof.op == 0 and not prof.iccid):
            return None
        # op 1/2 with status 1 (submitted) or 2 (in progress): busy, keep following
    raise CommandError(f"{what}: not finished after {timeout_s:.0f} s ({last_error})")
