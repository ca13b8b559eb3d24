"""A TOML-shaped config dict ({"interface": {...}, "peer": [{...}, ...]}, as
tunnel/control/config.py's parse() takes it) written out as pyvpn's TOML or as a
wg-quick INI file."""

from typing import Any

from tunnel.control import wg_quick


class ConvertError(ValueError):
    """What the wg-quick format cannot say; the message names the TOML keys."""


def to_toml(data: dict[str, Any]) -> str:
    """data as pyvpn's TOML: [interface], then one [[peer]] table per peer, then
    a fleet host's [fleet] (fleet.toml has that table alone). Keys whose value is
    None are left out."""
    out = []
    tables = (
        []
        if "interface" not in data and "fleet" in data
        else [("[interface]", data.get("interface", {}))]
    )
    tables += [("[[peer]]", p) for p in data.get("peer", [])]
    tables += [("[fleet]", data["fleet"])] if "fleet" in data else []
    for header, table in tables:
        out.append(header)
        out += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if v is not None]
        out.append("")
    return "\n".join(out)


def _toml_key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key)
    return key if bare else _toml_string(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


# TOML basic strings (toml.io, "String"): these escapes, other controls as \uXXXX.
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f"}
_ESCAPES["\r"] = "\\r"


def _toml_string(text: str) -> str:
    out = []
    for c in text:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif c < " " or c == "\x7f":
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def pyvpn_only(data: dict[str, Any], name: str | None = None) -> list[str]:
    """The keys of data that a wg-quick file cannot hold, as TOML names. A wg-quick
    file's interface is named after the file: `name` is that file's stem (None: it
    will be saved as NAME.conf, so interface.name is kept)."""
    interface = data.get("interface", {})
    lost = [
        f"interface.{key}"
        for key, value in interface.items()
        if key not in wg_quick.INTERFACE
        and not (key == "name" and name in (None, value))
        and not (key == "mode" and value == "tun")
    ]
    for i, peer in enumerate(data.get("peer", [])):
        lost += [f"peer[{i}].{key}" for key in peer if key not in wg_quick.PEER]
    return lost + (["fleet"] if "fleet" in data else [])


def to_wg_quick(data: dict[str, Any], name: str | None = None, lossy: bool = False) -> str:
    """data as a wg-quick INI file. Keys only pyvpn knows (pyvpn_only()) raise
    ConvertError naming them, or with lossy=True are left out."""
    lost = pyvpn_only(data, name)
    if lost and not lossy:
        raise ConvertError(
            f"{', '.join(lost)}: only pyvpn's TOML has "
            f"{'this key' if len(lost) == 1 else 'these keys'}, a wg-quick file cannot say it"
        )
    lines = ["[Interface]"]
    lines += _ini_section(data.get("interface", {}), wg_quick.INTERFACE, "interface")
    for i, peer in enumerate(data.get("peer", [])):
        lines += ["", "[Peer]", *_ini_section(peer, wg_quick.PEER, f"peer[{i}]")]
    return "\n".join(lines) + "\n"


def _ini_section(table: dict[str, Any], names: dict[str, str], where: str) -> list[str]:
    out = []
    for key, value in table.items():
        if key not in names or value is None:
            continue
        texts = [
            _ini_value(v, f"{where}.{key}") for v in (value if isinstance(value, list) else [value])
        ]
        if key in wg_quick.LISTS:
            for text in texts:
                if "," in text or not text:
                    raise ConvertError(f"{where}.{key}: {text!r} cannot be an item of a comma list")
            if texts:
                out.append(f"{names[key]} = {', '.join(texts)}")
        else:
            out += [f"{names[key]} = {text}" for text in texts]
    return out


def _ini_value(value: Any, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        raise ConvertError(f"{key}: cannot write {value!r} in a wg-quick file")
    # wg-quick reads a line up to its first '#' and strips the value (parse_options).
    if "#" in value:
        raise ConvertError(f"{key}: {value!r} holds a '#', where wg-quick's comments begin")
    if "\n" in value or "\r" in value or value != value.strip(wg_quick.SPACE):
        raise ConvertError(f"{key}: {value!r} cannot be one line of a wg-quick file")
    return value
