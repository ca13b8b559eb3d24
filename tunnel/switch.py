"""The learning switch of tap mode: which peer a MAC address sits behind.
Entries are learned only from frames that authenticated from that peer, and age
out like a Linux bridge's forwarding database (default ageing 300 s)."""

from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
DEFAULT_AGEING = 300.0


class Switch(Protocol[T]):
    """What the core asks of a MAC table: MacTable here, or the native plane's."""

    ageing: float

    def learn(self, mac: bytes, owner: T, now: float) -> None: ...

    def lookup(self, mac: bytes, now: float) -> T | None: ...

    def forget_owner(self, owner: T) -> None: ...

    def entries(self, now: float) -> list[tuple[bytes, T, float]]: ...


class MacTable(Generic[T]):
    def __init__(self, ageing: float = DEFAULT_AGEING) -> None:
        self.ageing = ageing
        self._entries: dict[bytes, tuple[T, float]] = {}

    def learn(self, mac: bytes, owner: T, now: float) -> None:
        if not mac[0] & 1:  # a group address is never a source to learn
            self._entries[mac] = (owner, now)

    def lookup(self, mac: bytes, now: float) -> T | None:
        entry = self._entries.get(mac)
        if entry is None:
            return None
        if now - entry[1] >= self.ageing:
            del self._entries[mac]
            return None
        return entry[0]

    def forget_owner(self, owner: T) -> None:
        self._entries = {m: e for m, e in self._entries.items() if e[0] is not owner}

    def entries(self, now: float) -> list[tuple[bytes, T, float]]:
        """Live entries as (mac, owner, age in seconds); expired ones are dropped."""
        self._entries = {m: e for m, e in self._entries.items() if now - e[1] < self.ageing}
        return [(mac, owner, now - seen) for mac, (owner, seen) in self._entries.items()]
