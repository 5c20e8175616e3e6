"""HOST:PORT, read one way everywhere: by the loader that checks a probe's target and by the probes that connect.

`HOST:PORT`, or `[V6]:PORT` for an IPv6 address; the port from 1 to 65535.
Standard library only, no I/O (no name is resolved here).
"""

from __future__ import annotations

import ipaddress


class AddressError(ValueError):
    """Text that is not HOST:PORT; the message says what is wrong with it."""


def split_host_port(text: str) -> tuple[str, int]:
    """`"HOST:PORT"` or `"[V6]:PORT"` -> (host, port), the brackets of an IPv6 address removed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise AddressError("is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise AddressError(f"has an invalid IPv6 address [{host}]") from None
    elif ":" in host:
        raise AddressError("has an IPv6 address without brackets (write [::1]:PORT)")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise AddressError(f"has an invalid port {port!r}")
    return host, int(port)


def host_port_problem(text: str) -> str | None:
    """What is wrong with `text` as HOST:PORT, or None."""
    try:
        split_host_port(text)
    except AddressError as exc:
        return str(exc)
    return None


def is_loopback(host: str) -> bool:
    """Whether `host` (as split_host_port returns it) names this machine only: localhost, 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere
