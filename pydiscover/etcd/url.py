"""``etcd://`` and ``etcds://`` URLs: endpoints, key prefix, credentials and TLS files.

``etcd://[user:password@]host[:port][,host[:port]...]/prefix[?address=...]`` and
``etcds://...?ca=FILE&cert=FILE&key=FILE`` (TLS: ``ca`` checks the server, ``cert`` and
``key`` identify this client).  Several hosts are tried in order.  Pure parsing: files are
read when a connection is made, not here.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

DEFAULT_PORT = 2379
DEFAULT_PREFIX = "pydiscover"
_PREFIX_RE = re.compile(r"[A-Za-z0-9._:/-]{1,200}")
_QUERY_KEYS = ("ca", "cert", "key", "address", "username", "password")


@dataclass(frozen=True)
class EtcdConfig:
    """Where etcd is and how to talk to it."""

    endpoints: tuple[tuple[str, int], ...]
    prefix: str = DEFAULT_PREFIX
    tls: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: The address to register instead of the one found on the route to etcd.
    address: str | None = None

    @property
    def display(self) -> str:
        """The URL for messages and logs, the password hidden."""
        scheme = "etcds" if self.tls else "etcd"
        user = f"{self.username}:***@" if self.username else ""
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.endpoints)
        return f"{scheme}://{user}{hosts}/{self.prefix}"

    @property
    def nodes_prefix(self) -> bytes:
        """Every registration's key starts with this: ``<prefix>/nodes/``."""
        return f"{self.prefix}/nodes/".encode()


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for errors about a URL that does not parse)."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def parse_etcd_url(url: str) -> EtcdConfig:
    """Parse a registry URL; ``ValueError`` naming the URL (password hidden) if it is not one."""
    if not isinstance(url, str):
        raise TypeError(f"registry must be an etcd:// URL, got {type(url).__name__}")
    shown = redact(url)
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("etcd", "etcds"):
        raise ValueError(f"registry {shown!r}: expected etcd://host:port[,host:port...]/prefix or etcds://... (TLS)")
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, colon, secret = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(secret) if colon else None
    endpoints = tuple(_endpoint(part, shown) for part in netloc.split(",")) if netloc else ()
    if not endpoints:
        raise ValueError(f"registry {shown!r}: no host (expected etcd://host:port/prefix)")
    prefix = path.strip("/") if slash else ""
    prefix = prefix or DEFAULT_PREFIX
    if not _PREFIX_RE.fullmatch(prefix) or "//" in prefix:
        raise ValueError(f"registry {shown!r}: the prefix must be 1-200 characters from A-Z a-z 0-9 . _ : / -")
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in _QUERY_KEYS:
            raise ValueError(f"registry {shown!r}: unknown parameter {name!r} (known: {', '.join(_QUERY_KEYS)})")
        options[name] = value
    username = options.get("username", username)
    password = options.get("password", password)
    if (username is None) != (password is None):
        raise ValueError(f"registry {shown!r}: give both a user name and a password, or neither")
    tls_files = {name: options.get(name) for name in ("ca", "cert", "key")}
    if scheme == "etcd" and any(tls_files.values()):
        raise ValueError(f"registry {shown!r}: ca, cert and key are TLS files: use etcds://")
    if (tls_files["cert"] is None) != (tls_files["key"] is None):
        raise ValueError(f"registry {shown!r}: a client certificate needs both cert and key")
    address = options.get("address")
    if address is not None:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"registry {shown!r}: address must be an IP address, got {address!r}") from None
    return EtcdConfig(endpoints=endpoints, prefix=prefix, tls=scheme == "etcds", ca=tls_files["ca"],
                      cert=tls_files["cert"], key=tls_files["key"], username=username, password=password,
                      address=address)


def _endpoint(text: str, shown: str) -> tuple[str, int]:
    host, port_text = text, ""
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError(f"registry {shown!r}: bad host {text!r}")
        port_text = after[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        raise ValueError(f"registry {shown!r}: write an IPv6 host in brackets, e.g. [::1]:2379")
    if not host:
        raise ValueError(f"registry {shown!r}: empty host in {text!r}")
    if not port_text:
        return (host, DEFAULT_PORT)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"registry {shown!r}: bad port {port_text!r}")
    return (host, int(port_text))
