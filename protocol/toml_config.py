"""Strict reading of the parties' TOML config files: unknown keys and half-filled tables are refused, by name.

Both parties' loaders (`client_party.config`, `provider_party.service.config`) read through here, so a
typo (`plaintxt = true`, `[tsl]`) or a `[tls]` table with only some of its files is an error that
names the file, the table and the key, never a silent fallback (a partial `[tls]` used to mean "no TLS").
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

from protocol.errors import CodedError
from protocol.tls import TLSFiles

TLS_FILE_KEYS = ("ca", "cert", "key")


class ConfigError(CodedError):
    """A config file (or the flags that override it) is invalid; code BAD_CONFIG, the message names the key."""


def fail(where: str, message: str) -> ConfigError:
    return ConfigError("BAD_CONFIG", f"{where}: {message}")


def _finite_unless_inf(text: str) -> float:
    """TOML's float parser, except that a number too large for a float (`1e400`) is refused instead of becoming
    infinity: a budget written that way would silently mean "unbounded". TOML's own `inf` still means infinity."""
    value = float(text)
    if math.isinf(value) and text.lstrip("+-") != "inf":
        raise _TooLarge(text)
    return value


class _TooLarge(ValueError):
    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """The parsed file; a missing file is a FileNotFoundError, an unreadable or malformed one a ConfigError naming it."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, f"the {what} config is a folder; give its TOML file", str(path))
    if not path.is_file():
        raise FileNotFoundError(2, f"{what} config file not found", str(path))
    try:
        text = path.read_text()
        return tomllib.loads(text, parse_float=_finite_unless_inf)
    except _TooLarge as e:
        line = next((i for i, ln in enumerate(text.splitlines(), 1) if e.text in ln), "?")
        raise ConfigError("BAD_CONFIG", f"cannot read {what} config {path}: line {line}: {e.text} is too large for a float (the largest is "
                                        "about 1.8e308); write inf if you mean no bound") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError("BAD_CONFIG", f"cannot read {what} config {path}: {e}") from None
    except RecursionError:
        raise ConfigError("BAD_CONFIG", f"cannot read {what} config {path}: its arrays or tables nest deeper than the parser follows") from None


def check_keys(table: Any, allowed: set[str] | tuple[str, ...], where: str) -> dict[str, Any]:
    """`table` must be a TOML table holding only `allowed` keys; returns it."""
    if not isinstance(table, dict):
        raise fail(where, f"must be a table ([...]), got {type(table).__name__} {table!r}")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise fail(where, f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(sorted(allowed))} (check the spelling)")
    return table


def section(data: dict[str, Any], name: str, allowed: set[str] | tuple[str, ...], path: Path) -> dict[str, Any]:
    """The table `[name]` of `data` (empty when absent), its keys checked."""
    return check_keys(data.get(name, {}), allowed, f"{path} [{name}]")


def string(table: dict[str, Any], key: str, where: str, default: str | None = None) -> str | None:
    v = table.get(key, default)
    if v is not None and not isinstance(v, str):
        raise fail(where, f"{key} must be a string, got {v!r}")
    return v


def boolean(table: dict[str, Any], key: str, where: str, default: bool) -> bool:
    v = table.get(key, default)
    if not isinstance(v, bool):
        raise fail(where, f"{key} must be true or false, got {v!r}")
    return v


def positive(table: dict[str, Any], key: str, where: str, default: float, *, integer: bool = False) -> Any:
    v = table.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)) or not (v > 0 and math.isfinite(v)):
        raise fail(where, f"{key} must be a positive {'integer' if integer else 'number'}, got {v!r}")
    return v


def string_list(table: dict[str, Any], key: str, where: str, default: tuple[str, ...]) -> tuple[str, ...]:
    v = table.get(key, list(default))
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise fail(where, f"{key} must be a list of non-empty strings, got {v!r}")
    return tuple(v)


def tls_section(data: dict[str, Any], base: Path, path: Path) -> tuple[TLSFiles | None, bool]:
    """`[tls]`: all of ca, cert and key (mutual TLS), or `plaintext = true` alone, or no table at all.

    Returns (TLSFiles or None, plaintext). Paths are relative to the config file's folder.
    """
    if "tls" not in data:
        return None, False
    where = f"{path} [tls]"
    t = check_keys(data["tls"], (*TLS_FILE_KEYS, "plaintext"), where)
    plaintext = boolean(t, "plaintext", where, False)
    given = [k for k in TLS_FILE_KEYS if k in t]
    if plaintext:
        if given:
            raise fail(where, f"plaintext = true and TLS files ({', '.join(given)}) contradict each other; "
                              "remove plaintext for mutual TLS, or the files for plaintext (loopback only)")
        return None, True
    if len(given) != len(TLS_FILE_KEYS):
        missing = [k for k in TLS_FILE_KEYS if k not in t]
        raise fail(where, f"missing {', '.join(missing)}: mutual TLS needs all of ca, cert and key "
                          "(`llamdex certs` writes them), or set plaintext = true alone (loopback only)")
    files = []
    for k in TLS_FILE_KEYS:
        v = t[k]
        if not isinstance(v, str) or not v:
            raise fail(where, f"{k} must be a non-empty path string, got {v!r}")
        files.append(base / v)
    return TLSFiles(*files), False


__all__ = ["ConfigError", "TLS_FILE_KEYS", "boolean", "check_keys", "fail", "positive", "read_toml", "section", "string",
           "string_list", "tls_section"]
