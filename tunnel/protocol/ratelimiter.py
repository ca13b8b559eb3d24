"""Token buckets per key: by default per source, for handshake processing under
load (drivers/net/wireguard/ratelimiter.c: 20 packets per second, bursts of 5);
one bucket under one key for the ICMP errors of core/send.py (Sending.unreachable)."""

import functools
import ipaddress

from .constants import RATELIMIT_BURST, RATELIMIT_PACKETS_PER_SECOND


@functools.lru_cache(maxsize=1024)
def source_key(host: str) -> str:
    """The key a source address is limited under: an IPv4 address, or the /64 of an
    IPv6 one, as ratelimiter.c keys it (one host holds a whole /64)."""
    address = ipaddress.ip_address(host)
    if address.version == 4:
        return host
    return str(ipaddress.ip_network(f"{host}/64", strict=False))


class RateLimiter:
    def __init__(
        self, rate: float = RATELIMIT_PACKETS_PER_SECOND, burst: int = RATELIMIT_BURST
    ) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}  # host -> (tokens, last update)
        self._last_sweep = float("-inf")

    def allow(self, host: str, now: float) -> bool:
        # Forget idle sources once a second so a spoofed flood cannot grow the table.
        if now - self._last_sweep >= 1.0:
            full_after = self.burst / self.rate
            self._buckets = {h: b for h, b in self._buckets.items() if now - b[1] < full_after}
            self._last_sweep = now
        tokens, last = self._buckets.get(host, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[host] = (tokens, now)
            return False
        self._buckets[host] = (tokens - 1.0, now)
        return True
