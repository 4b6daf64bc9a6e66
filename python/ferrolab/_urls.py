"""Credentials in URLs, found so that messages, labels and reprs can leave them out."""

from __future__ import annotations


def split_userinfo(url: str) -> tuple[str, str, str] | None:
    """``(scheme://, userinfo, rest)`` of a URL with credentials (``rest`` follows their ``@``); else None.

    The userinfo ends at the authority's last ``@``. A password holding an unencoded ``/``, ``?`` or ``#`` ends the
    authority early (``http://ci:pa/ss@gw`` parses as host ``ci`` with port ``pa``); such a URL is invalid, but its
    password must not show either: when what parses as the port is not a number and an ``@`` follows, everything up
    to the last ``@`` counts as userinfo.

    Examples
    --------
    >>> from ferrolab._urls import split_userinfo
    >>> split_userinfo("http://ci:pa/ss@gw:9091/x"), split_userinfo("http://gw:9091/job/a@b")
    (('http://', 'ci:pa/ss', 'gw:9091/x'), None)
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority = rest[:end]
    if "@" in authority:
        at = authority.rindex("@")
    else:
        _host, colon, port = authority.rpartition(":")
        # an IPv6 host without a port ("[::1]") ends with "]"; an empty port is valid
        if not colon or not port or port.isdigit() or authority.endswith("]") or "@" not in rest[end:]:
            return None
        at = rest.rindex("@")
    return scheme + sep, rest[:at], rest[at + 1 :]
