"""Which addresses are mailed: every address Django's ``EmailValidator`` accepts.

Help desks store addresses their Django forms validated, so the tool accepts exactly
those (internal and special-use domains included: ``ops@corp.local``,
``root@localhost``, ``it@helpdesk.home.arpa``), plus internationalized local parts
(RFC 6531), which go out over SMTPUTF8. Only what is not an address at all is refused.

The regular expressions are Django's (``django.core.validators.EmailValidator``, BSD
licence), so that the rule is the same without depending on Django at run time.
"""

from __future__ import annotations

import functools
import ipaddress
import re

MAX_LENGTH = 320
"""RFC 3696 §3, as Django checks it."""

_USER = re.compile(
    # dot-atom
    r"(^[-!#$%&'*+/=?^_`{}|~0-9A-Z]+(\.[-!#$%&'*+/=?^_`{}|~0-9A-Z]+)*\Z"
    # quoted-string
    r'|^"([\001-\010\013\014\016-\037!#-\[\]-\177]|\\[\001-\011\013\014\016-\177])*"\Z)',
    re.IGNORECASE)
_DOMAIN = re.compile(
    # labels of at most 63 characters (RFC 1034), and a top-level label of letters,
    # digits or hyphens
    r"((?:[A-Z0-9](?:[A-Z0-9-]{0,61}[A-Z0-9])?\.)+)(?:[A-Z0-9-]{2,63}(?<!-))\Z",
    re.IGNORECASE)
_LITERAL = re.compile(r"\[([A-F0-9:.]+)\]\Z", re.IGNORECASE)
_DOMAIN_ALLOWLIST = ("localhost",)
_UTF8_ATOM = re.compile(r"[^\s\"(),.:;<>@\[\\\]]+(?:\.[^\s\"(),.:;<>@\[\\\]]+)*\Z")
"""RFC 6531's dot-atom with UTF-8 characters: what an internationalized local part is."""


@functools.lru_cache(maxsize=4096)
def address_problem(address: str) -> str | None:
    """Why ``address`` cannot be mailed (it is not an address), or None when it can.

    Syntax only, as Django checks it (no DNS). A local part Django would refuse only for
    being non-ASCII is accepted when it is RFC 6531's UTF-8 dot-atom."""
    if not address or "@" not in address:
        return "not an address (no @)"
    if len(address) > MAX_LENGTH:
        return f"not an address (longer than {MAX_LENGTH} characters)"
    local, domain = address.rsplit("@", 1)
    if not _USER.match(local) and not (
            not local.isascii() and local.isprintable() and _UTF8_ATOM.match(local)):
        return "not an address (the part before @ is not valid)"
    if domain in _DOMAIN_ALLOWLIST or _valid_domain(domain):
        return None
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return "not an address (the domain is not valid)"
    return None if _valid_domain(ascii_domain) else "not an address (the domain is not valid)"


def _valid_domain(domain: str) -> bool:
    if _DOMAIN.match(domain):
        return True
    literal = _LITERAL.match(domain)
    if literal is None:
        return False
    try:
        ipaddress.ip_address(literal[1])
    except ValueError:
        return False
    return True
