"""Environment overrides: ``VSIM_<SECTION>__<KEY>`` and ``VSIM_<SECTION>`` (JSON) variables.

Owns turning the process environment into config data plus a record of which variable set
which key, so that an error about an overridden value names the variable, not the file.

* ``VSIM_UPSTREAM__URL=…`` sets ``upstream.url`` (a string; pydantic converts it to the key's
  type: ``VSIM_UPSTREAM__HEARTBEAT_S=7``, ``VSIM_LOG__SHOW_CONTENT=true``).
* ``VSIM_UPSTREAM='{"url": …}'`` sets keys of a table section from a JSON object;
  ``VSIM_DEVICES='[{…}]'`` replaces a list section (``devices``, ``sims``, ``number_discovery``)
  with a JSON array.  Invalid JSON is an error naming the variable.
* Names are case-insensitive, as they were under pydantic-settings.  The environment wins over
  the file; per-key variables win over a section's JSON.
* Any other ``VSIM_*`` variable is an error: a daemon that silently ignores
  ``VSIM_UPSTREM__URL`` runs against the wrong hub.  The few ``VSIM_*`` variables that are not
  configuration (:data:`NOT_CONFIG`) are allowed by name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.config_rules import cut, structure_problem

PREFIX = "VSIM_"
#: ``VSIM_*`` variables that are not config keys: a test seam read by the sender
#: (``agent/uplink.py``), the switch of the network tests (``tests/test_install.py``) and the
#: soak size of the PDU differential test (``tests/drivers/at/test_pdu_gsmmodem.py``), which
#: may be set for a whole test run that loads configs in-process.
NOT_CONFIG = frozenset({"VSIM_DEBUG_WEDGE", "VSIM_NETWORK_TESTS", "VSIM_DIFF_EXAMPLES"})


@dataclass(slots=True)
class EnvOverrides:
    #: Config data from the environment, shaped like the file's.
    data: dict[str, Any] = field(default_factory=dict)
    #: Key path → the variable that set it (``("upstream", "url")`` → ``VSIM_UPSTREAM__URL``).
    origins: dict[tuple[str, ...], str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def read_env(
    environ: Mapping[str, str], tables: frozenset[str], lists: frozenset[str]
) -> EnvOverrides:
    """Collect the overrides for the sections ``tables`` (TOML tables) and ``lists`` (arrays
    of tables) from ``environ``; problems go to ``errors``, one line each, naming the variable."""
    out = EnvOverrides()
    sections = sorted(tables | lists)
    whole: list[tuple[str, str, str]] = []
    keys: list[tuple[str, str, str, str]] = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(PREFIX) or upper in NOT_CONFIG:
            continue
        shown_name = cut(name, 60)
        section, sep, key = upper[len(PREFIX) :].partition("__")
        section = section.lower()
        if section not in tables and section not in lists:
            out.errors.append(
                f"{shown_name}: not a config variable: no section {cut(section, 40)!r} "
                f"(sections: {', '.join(sections)}; form VSIM_<SECTION>__<KEY>)"
            )
        elif not sep:
            whole.append((name, section, environ[name]))
        elif section in lists:
            out.errors.append(
                f"{shown_name}: {section} is a list of tables; set the whole list as a JSON "
                f"array in VSIM_{section.upper()}"
            )
        elif not key:
            out.errors.append(f"{shown_name}: names no key (form VSIM_<SECTION>__<KEY>)")
        else:
            keys.append((name, section, key.lower(), environ[name]))
    for name, section, raw in whole:
        _section_json(out, name, section, raw, section in lists)
    for name, section, key, raw in keys:
        table = out.data.setdefault(section, {})
        if isinstance(table, dict):
            table[key] = raw
            out.origins[(section, key)] = name
    return out


def _section_json(out: EnvOverrides, name: str, section: str, raw: str, is_list: bool) -> None:
    want = "a JSON array of tables" if is_list else f"a JSON object of {section} keys"
    try:
        value = json.loads(raw)
    except RecursionError:
        out.errors.append(f"{name}: must be {want}; it is nested too deeply")
        return
    except ValueError as exc:
        out.errors.append(f"{name}: must be {want}; not valid JSON: {cut(str(exc))}")
        return
    if not isinstance(value, list if is_list else dict):
        out.errors.append(f"{name}: must be {want}, not a JSON {_json_type(value)}")
        return
    problem = structure_problem(value)
    if problem is not None:
        out.errors.append(f"{name}: {problem[1]}")
        return
    if is_list:
        out.data[section] = value
        out.origins[(section,)] = name
    else:
        out.data[section] = dict(value)
        for key in value:
            out.origins[(section, key)] = name


def merge(file_data: Mapping[str, Any], env: EnvOverrides) -> dict[str, Any]:
    """The file's data with the environment's on top (tables key by key, lists whole)."""
    merged = dict(file_data)
    for section, value in env.data.items():
        base = merged.get(section)
        if isinstance(value, dict) and isinstance(base, dict):
            merged[section] = {**base, **value}
        else:
            merged[section] = value
    return merged


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"
