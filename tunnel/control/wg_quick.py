"""wg-quick's INI config files: which of its keys stand for which TOML key, and how
its text reads. The INI parser turns a file into the same TOML-shaped dict that
tunnel/control/config.py's parse() validates, with each key's line remembered, so
that an error can name `FILE:LINE: Key`."""

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# wg-quick's own keys (wg-quick(8): Address, DNS, MTU, Table, the hooks, SaveConfig)
# and wg's (wg(8) CONFIGURATION FILE FORMAT), each with its TOML key. LISTS may be
# written as comma lists or repeated keys; HOOKS are repeated keys only, since a
# command may hold commas (wg-quick's parse_options appends each PreUp line whole).
INTERFACE = {
    "address": "Address",
    "listen_port": "ListenPort",
    "private_key": "PrivateKey",
    "dns": "DNS",
    "mtu": "MTU",
    "table": "Table",
    "fwmark": "FwMark",
    "pre_up": "PreUp",
    "post_up": "PostUp",
    "pre_down": "PreDown",
    "post_down": "PostDown",
    "save_config": "SaveConfig",
}
PEER = {
    "public_key": "PublicKey",
    "preshared_key": "PresharedKey",
    "allowed_ips": "AllowedIPs",
    "endpoint": "Endpoint",
    "persistent_keepalive": "PersistentKeepalive",
}
LISTS = {"address", "dns", "allowed_ips"}
HOOKS = ("pre_up", "post_up", "pre_down", "post_down")
SECTIONS = {"[interface]": INTERFACE, "[peer]": PEER}
# The interface names wg-quick takes (its parse_options), "." and ".." aside, which
# Linux refuses (dev_valid_name). Every pattern here is matched whole (fullmatch):
# "$" would also take a trailing newline.
IFNAME = re.compile(r"(?!\.\.?\Z)[a-zA-Z0-9_=+.-]{1,15}")
IFNAME_RULE = "1-15 of A-Z a-z 0-9 _ = + . -"
# wg-quick reads a file named like this as the interface of that name (parse_options).
FILE_NAME = re.compile(r"([a-zA-Z0-9_=+.-]{1,15})\.conf")
SPACE = " \t\r\v\f"  # [[:space:]] in wg-quick's C locale
DIGITS = re.compile(r"[0-9]{1,20}")
# wg's parse_fwmark: a 0x prefix (lowercase x) for hex, else decimal (a leading 0 is
# no octal prefix, 0X none at all), and "off".
FWMARK = re.compile(r"0x([0-9a-fA-F]{1,64})|([0-9]{1,64})")


def shown(text: str, limit: int | None = None) -> str:
    """User text as an error quotes it: as it is if every character of it prints,
    else as a Python literal, whose escapes a terminal shows rather than obeys."""
    text = text[:limit]
    return text if text.isprintable() else repr(text)


def is_wg_quick(text: str) -> bool:
    """Whether text is a wg-quick file: it has an [Interface] line as wg-quick spells
    it (TOML writes [interface]), or a [Peer] (TOML writes [[peer]])."""
    for line in text.split("\n"):
        line = line.split("#", 1)[0].strip(SPACE)
        if line == "[Interface]" or line.lower() == "[peer]":
            return True
    return False


class IniError(Exception):
    """A line that is not wg-quick's format: where, the key, and what is wrong."""

    def __init__(self, line: int | None, key: str, problem: str) -> None:
        super().__init__(problem)
        # What the file wrote, cut short, and quoted if a terminal would not show it.
        self.line, self.key, self.problem = line, shown(key, 40), problem


@dataclass
class IniFile:
    data: dict[str, Any]  # TOML-shaped, for config.parse()
    lines: dict[str, int] = field(default_factory=dict)  # a TOML key's line

    def locate(self, key: str) -> tuple[int | None, str]:
        """Where a TOML key (interface.address[1], peer[0].public_key, ...) was
        written, and its wg-quick name."""
        section, _, rest = key.partition(".")
        field_name = rest.split("[", 1)[0]
        names = INTERFACE if section == "interface" else PEER
        if field_name == "name":
            return None, "interface name (the file's name)"
        if field_name in names:
            shown = names[field_name]
        else:
            shown = "[Interface]" if section == "interface" else "[Peer]"
        for candidate in (key, f"{section}.{field_name}", section):
            if candidate in self.lines:
                return self.lines[candidate], shown
        return None, shown


def read(text: str, path: str) -> IniFile:
    """A wg-quick file as the TOML-shaped dict; IniError for what is not its format."""
    match = FILE_NAME.fullmatch(Path(path).name)
    if not match:
        raise IniError(
            None, "", f"a wg-quick file is named after its interface: NAME.conf, NAME being "
            f"{IFNAME_RULE}",
        )  # fmt: skip
    interface: dict[str, Any] = {"name": match.group(1)}
    peers: list[dict[str, Any]] = []
    ini = IniFile({"interface": interface, "peer": peers})
    table: dict[str, Any] | None = None
    where, names = "", INTERFACE
    for number, raw in enumerate(text.split("\n"), 1):
        # As wg-quick's parse_options: a '#' anywhere starts a comment.
        line = raw.split("#", 1)[0].strip(SPACE)
        if not line:
            continue
        if not line.isascii() and _undecoded(line):
            # config._text kept the bytes that are not UTF-8 as surrogates: as in wg-quick,
            # a comment may hold anything (a Latin-1 editor's), a setting may not.
            raise IniError(number, "", "not UTF-8 text (only a comment may hold other bytes)")
        if line.startswith("["):
            if line.lower() not in SECTIONS:
                raise IniError(number, line, "unknown section (there are [Interface], [Peer])")
            names = SECTIONS[line.lower()]
            if names is INTERFACE:
                table, where = interface, "interface"
            else:
                table, where = {}, f"peer[{len(peers)}]"
                peers.append(table)
            ini.lines.setdefault(where, number)
            continue
        key, equals, value = line.partition("=")
        key, value = key.strip(SPACE), value.strip(SPACE)
        if not equals:
            raise IniError(number, key, "is not a line like Key = value")
        if table is None:
            raise IniError(number, key, "comes before the [Interface] section")
        toml_key = _toml_key(key, names)
        if toml_key is None:
            raise IniError(number, key, _unknown(key, names))
        full = f"{where}.{toml_key}"
        ini.lines.setdefault(full, number)
        if toml_key in LISTS or toml_key in HOOKS:
            items = table.setdefault(toml_key, [])
            for item in value.replace(",", " ").split() if toml_key in LISTS else [value]:
                ini.lines[f"{full}[{len(items)}]"] = number
                items.append(item)
        else:
            # As wg: a key given again replaces the value before.
            table[toml_key] = _typed(toml_key, value)
            ini.lines[full] = number
    if "interface" not in ini.lines:
        raise IniError(None, "[Interface]", "missing: a wg-quick file has one [Interface] section")
    return ini


def _toml_key(key: str, names: dict[str, str]) -> str | None:
    # Case-insensitive, as wg's config.c (strncasecmp) and wg-quick (nocasematch) read keys.
    for toml_key, ini_key in names.items():
        if ini_key.lower() == key.lower():
            return toml_key
    return None


def _unknown(key: str, names: dict[str, str]) -> str:
    other, section = (PEER, "[Peer]") if names is INTERFACE else (INTERFACE, "[Interface]")
    if _toml_key(key, other):
        return f"belongs in {section}"
    return "unknown key (tap mode and pyvpn's own keys are in TOML files only)"


def _typed(key: str, value: str) -> Any:
    """The value as TOML would hold it, where wg or wg-quick reads it as a number or
    a boolean; anything else stays text, for config.parse() to name the problem."""
    lower = value.lower()
    if key == "save_config" and lower in ("true", "false"):
        return lower == "true"
    if key in ("fwmark", "persistent_keepalive") and lower == "off":
        return 0
    if key == "fwmark":
        match = FWMARK.fullmatch(value)
        if match:
            hexadecimal, decimal = match.groups()
            return int(hexadecimal, 16) if hexadecimal else int(decimal)
    numbers = ("listen_port", "mtu", "persistent_keepalive", "table")
    return int(value) if key in numbers and DIGITS.fullmatch(value) else value


def _undecoded(text: str) -> bool:
    """Whether text holds bytes that were not UTF-8 (decoded with surrogateescape)."""
    return any("\udc80" <= c <= "\udcff" for c in text)
