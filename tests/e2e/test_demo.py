"""``vsim-agent demo`` as a person runs it: the process ends by itself and shows its work.

The demo's three acts: SMS from the traffic generator reach the hub, the customer's rentals get
their codes, and the platform works the simulated SIM-bank gateway (a standby slot enabled, an
eSIM profile downloaded and deleted).
"""

from __future__ import annotations

import re

from tests.e2e.conftest import cli


def test_demo_runs_its_acts_and_ends_by_itself() -> None:
    done = cli("demo", "--duration", "20", "--rate", "10", timeout=90)
    out = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"customer: getstatus \d+ → code \d+ ✓", out), out[-3000:]
    assert re.search(r"platform: enable standby \d\.\d\d → online", out), out[-3000:]
    assert re.search(r"platform: esim_download → 89\d{17}", out), out[-3000:]
    summary = re.search(
        r"(\d+) messages received by the hub, duplicates absorbed by id: (\d+)", out
    )
    assert summary is not None, out[-2000:]
    assert int(summary.group(1)) > 20 and int(summary.group(2)) == 0
    assert "Traceback" not in done.stderr
