"""Cryptokey routing (whitepaper section 2): the longest-prefix match from an inner
address to the peer that owns it, used to pick the peer on send and to check the
source on receive."""

import functools
import ipaddress
from typing import Generic, TypeVar

T = TypeVar("T")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=1 << 16)
def network_text(network: Network) -> str:
    """`10.128.0.2/32`: what show and the UAPI print for every peer on every call,
    and ipaddress spells out anew each time (some 10 µs; a hub has thousands)."""
    return str(network)


class AllowedIPs(Generic[T]):
    def __init__(self) -> None:
        # One table per (version, prefix length): a lookup tries the few distinct
        # prefix lengths in use from longest to shortest.
        self._tables: dict[tuple[int, int], dict[int, tuple[Network, T]]] = {}
        self._lengths: dict[int, list[int]] = {4: [], 6: []}
        # Each owner's networks in the order it got them: what a hub of thousands of
        # peers lists or removes per peer costs that peer's networks, not all of them.
        self._owned: dict[T, dict[Network, None]] = {}

    def insert(self, network: Network, owner: T) -> None:
        """Map the network to owner; an existing owner of the same network loses it."""
        key = (network.version, network.prefixlen)
        if key not in self._tables:
            self._tables[key] = {}
            self._lengths[network.version] = sorted(
                {*self._lengths[network.version], network.prefixlen}, reverse=True
            )
        address = int(network.network_address)
        previous = self._tables[key].get(address)
        if previous is not None:
            self._disown(previous[0], previous[1])
        self._tables[key][address] = (network, owner)
        self._owned.setdefault(owner, {})[network] = None

    def remove(self, network: Network, owner: T) -> None:
        """Drop the network if owner holds it (another owner's entry stays)."""
        table = self._tables.get((network.version, network.prefixlen), {})
        hit = table.get(int(network.network_address))
        if hit is not None and hit[1] is owner:
            del table[int(network.network_address)]
            self._disown(hit[0], owner)

    def remove_owner(self, owner: T) -> None:
        for network in self._owned.pop(owner, {}):
            del self._tables[(network.version, network.prefixlen)][int(network.network_address)]

    def _disown(self, network: Network, owner: T) -> None:
        owned = self._owned[owner]
        del owned[network]
        if not owned:
            del self._owned[owner]

    def networks(self) -> set[Network]:
        """Every network that has an owner."""
        return {net for table in self._tables.values() for net, _ in table.values()}

    def networks_of(self, owner: T) -> list[Network]:
        return list(self._owned.get(owner, ()))

    def lookup(self, version: int, address: bytes) -> T | None:
        bits = 32 if version == 4 else 128
        value = int.from_bytes(address, "big")
        for length in self._lengths[version]:
            table = self._tables[(version, length)]
            hit = table.get(value >> (bits - length) << (bits - length))
            if hit is not None:
                return hit[1]
        return None
