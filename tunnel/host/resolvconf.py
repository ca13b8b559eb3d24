"""The tunnel's DNS servers and search domains, given to resolvconf(8) while it is
up, as wg-quick's set_dns and unset_dns do: `resolvconf -a IFACE -m 0 -x` (metric
0, exclusive: these servers alone answer while the tunnel is up), then
`resolvconf -d IFACE -f`."""

import logging
import re
import subprocess
from pathlib import Path

log = logging.getLogger("pyvpn")

# An entry like this is a nameserver, anything else a search domain (wg-quick's
# parse_options: [[ $v =~ (^[0-9.]+$)|(^.*:.*$) ]]).
NAMESERVER = re.compile(r"^[0-9.]+$|:")
INTERFACE_ORDER = Path("/etc/resolvconf/interface-order")


class ResolvconfError(Exception):
    pass


def record_name(name: str) -> str:
    """The name of the interface's resolvconf record: prefixed as wg-quick's
    resolvconf_iface_prefix does, with the first `PREFIX*` line of Debian's
    resolvconf interface-order ("tun." there); openresolv has no such file."""
    try:
        lines = INTERFACE_ORDER.read_text().splitlines()
    except OSError:
        return name
    for line in lines:
        match = re.fullmatch(r"([A-Za-z0-9-]+)\*", line.strip())
        if match:
            return f"{match.group(1)}.{name}"
    return name


def add(name: str, dns: list[str]) -> None:
    servers = [f"nameserver {d}\n" for d in dns if NAMESERVER.search(d)]
    domains = [d for d in dns if not NAMESERVER.search(d)]
    text = "".join(servers) + (f"search {' '.join(domains)}\n" if domains else "")
    _resolvconf(["-a", record_name(name), "-m", "0", "-x"], text)
    log.info("%s: DNS: %s", name, ", ".join(dns))


def delete(name: str) -> None:
    try:
        _resolvconf(["-d", record_name(name), "-f"], "")
    except ResolvconfError as e:
        log.warning("%s: %s", name, e)


def _resolvconf(args: list[str], text: str) -> None:
    try:
        result = subprocess.run(
            ["resolvconf", *args], input=text, capture_output=True, text=True, timeout=30
        )
    except FileNotFoundError:
        raise ResolvconfError(
            "DNS needs resolvconf, which is not installed (apt-get install openresolv)"
        ) from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ResolvconfError(f"resolvconf {args[0]}: {e}") from None
    if result.returncode:
        reason = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        raise ResolvconfError(f"resolvconf {args[0]} failed: {reason}")
