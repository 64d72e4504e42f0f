"""Callback URL rules: what a ``callback_url`` may be, and which addresses may be connected to.

SSRF: unless private networks are allowed (WEBHOOK_ALLOW_PRIVATE_NETWORKS), every address a host
resolves to must be public: not loopback, link-local (the 169.254.169.254 metadata endpoint
included), private, shared (CGNAT), reserved, multicast or unspecified, nor the Azure platform
address 168.63.129.16; IPv6 forms that embed an IPv4 address (IPv4-mapped, NAT64, 6to4, Teredo)
are judged by that address. The same rule is applied at submission and at connect time, to the
address actually connected to (``sender``), so a name that re-resolves elsewhere is refused too.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import SplitResult, urlsplit

MAX_URL_LENGTH = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

_AZURE_PLATFORM = ipaddress.ip_network("168.63.129.16/32")  # wireserver / platform DNS
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class CallbackUrlError(ValueError):
    """Why a callback URL (or the address it resolves to) is refused; the message is for the caller."""


def resolve_host(host: str, port: int) -> list[str]:
    """The addresses of ``host`` (IPv4 and IPv6, in resolver order, without duplicates)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise CallbackUrlError(f"host {host!r} does not resolve ({exc})") from exc
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]
        if address not in seen:
            seen.append(address)
    if not seen:
        raise CallbackUrlError(f"host {host!r} has no address")
    return seen


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def address_refusal(address: str) -> str | None:
    """Why ``address`` may not be connected to without WEBHOOK_ALLOW_PRIVATE_NETWORKS; None if public."""
    try:
        ip: IPAddress = ipaddress.ip_address(address)
    except ValueError:
        return f"{address!r} is not an IP address"
    embedded = _embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    if embedded is not None:
        reason = address_refusal(str(embedded))
        return f"{ip} embeds {reason}" if reason else None
    return _refusal_of(ip)


def _refusal_of(ip: IPAddress) -> str | None:
    shown = str(ip)
    for attribute, what in (
        ("is_unspecified", "unspecified"),
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_reserved", "reserved"),
        ("is_private", "private"),
    ):
        if getattr(ip, attribute):
            return f"{shown} is a {what} address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return f"{shown} is a site-local address"
    if ip in _AZURE_PLATFORM:
        return f"{shown} is the Azure platform address"
    if not ip.is_global:
        return f"{shown} is not a public address"
    return None


def split_callback_url(url: str, *, allow_http: bool) -> SplitResult:
    """The parsed URL when its form is acceptable (no resolution); CallbackUrlError otherwise."""
    if len(url) > MAX_URL_LENGTH:
        raise CallbackUrlError(f"longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url) or not url.isascii():
        raise CallbackUrlError("must be an ASCII URL without spaces or control characters (percent-encode them)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CallbackUrlError(f"not a valid URL: {exc}") from exc
    allowed = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in allowed:
        raise CallbackUrlError("must be an https:// URL" if not allow_http else "must be an http(s):// URL")
    if parts.username is not None or parts.password is not None:
        raise CallbackUrlError("must not contain credentials (user:password@); the signature authenticates us")
    if parts.fragment or url.endswith("#"):
        raise CallbackUrlError("must not contain a fragment (#...)")
    if not parts.hostname:
        raise CallbackUrlError("has no host")
    if port == 0:
        raise CallbackUrlError("port 0 is not a port")
    return parts


def default_port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def check_callback_url(url: str, *, allow_http: bool, allow_private: bool, resolve: Resolver = resolve_host) -> None:
    """Refuse (CallbackUrlError) a URL of the wrong form, or whose host resolves to any address
    the SSRF rule refuses (every address is checked: the sender may connect to any of them)."""
    parts = split_callback_url(url, allow_http=allow_http)
    host = parts.hostname or ""
    addresses = resolve(host, default_port(parts))
    if allow_private:
        return
    for address in addresses:
        reason = address_refusal(address)
        if reason:
            named = "" if address == host else f"host {host!r} resolves to "
            raise CallbackUrlError(f"{named}{reason}; not allowed (WEBHOOK_ALLOW_PRIVATE_NETWORKS is off)")


def redact_url(url: str) -> str:
    """The URL as shown in the job status: scheme, host, port and path; a query string (which may
    hold a token) is replaced by ``?redacted``."""
    try:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc += f":{parts.port}"
    except ValueError:
        return "(unparseable URL)"
    return f"{parts.scheme}://{netloc}{parts.path}" + ("?redacted" if parts.query else "")
