"""The tun-versus-tap scenarios of `pyvpn bench --scenarios`: where L2 and L3 differ.

Each runs pyvpn in tun mode and in tap mode (native plane), and tinc in switch
mode where it can, on a testbed of its own; run.py runs them, output.py shows
what they found.
"""

from __future__ import annotations

from . import chatter, first_packet, flooding, ipv6_inside, lan_mtu
from .run import Scenario

# In this order the first four share one network per variant (lan.two_lans), and
# lan-mtu comes before anything sends full-size packets, so that its path is new.
SCENARIOS: tuple[Scenario, ...] = (
    chatter.SCENARIO,
    lan_mtu.SCENARIO,
    first_packet.SCENARIO,
    ipv6_inside.SCENARIO,
    flooding.SCENARIO,
)
NAMES = tuple(s.name for s in SCENARIOS)


def selected(names: str | None) -> list[Scenario]:
    """The scenarios `--scenarios NAMES` asks for ("all" for every one); ValueError
    naming the unknown ones."""
    if not names:
        return []
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if wanted == ["all"]:
        return list(SCENARIOS)
    unknown = [n for n in wanted if n not in NAMES]
    if unknown:
        raise ValueError(f"unknown scenario {', '.join(unknown)}; known: {', '.join(NAMES)}, all")
    return [s for s in SCENARIOS if s.name in wanted]  # in SCENARIOS' order, whatever was asked
