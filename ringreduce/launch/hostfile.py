"""Hostfiles: which hosts an MPI job may use, and how many processes ("slots") each takes.

Two formats are read, one host per line, and may be mixed in one file:

    node1:4                 # MPICH / Hydra style, host:slots
    node2 slots=4           # Open MPI / Horovod style, host slots=N
    node3 slots=4 max_slots=8
    [fe80::1]:2             # IPv6 in host:slots form needs the brackets
    fe80::2 slots=2         # ... but not in slots=N form

`#` starts a comment (a whole line or the rest of one); blank lines are skipped; CRLF line ends
and a UTF-8 byte order mark are accepted, since hostfiles are often written on Windows.

Every line must state its slots. MPICH and Open MPI would both fill in a default (1, or the
number of cores), but a forgotten count silently changes how many ranks land where, so here it
is an error, like a zero or non-numeric count.

A host is an RFC 1123 name, an IPv4 address or an IPv6 address, and nothing else. The launcher
hands host names to mpiexec, which hands them to ssh on a remote shell's command line, so a name
with shell syntax in it (`$(...)`, `;`, quotes, ...) or starting with `-` (ssh would read
`-oProxyCommand=...` as an option) is rejected here rather than escaped later.

A host listed twice is an error naming both lines. Summing the slots would be a guess: Hydra
places ranks line by line (so `a:1, b:1, a:1` gives ranks on a, b, a), while a merged list gives
a, a, b; and a duplicated line is more often a copy-paste slip than intent.

This module imports nothing from MPI, so it can be used and tested anywhere.
"""
import ipaddress
import re
from dataclasses import dataclass
from typing import List, Optional

__all__ = ["Host", "HostfileError", "parse_hostfile", "parse_host_list", "format_hostfile"]


class HostfileError(ValueError):
    """A hostfile or host list that cannot be used; the message names where and why.

    `source` is the file path (or "-H" for a host list), `lineno` the 1-based line number (or
    item number in a host list), None when the problem is with the whole file. The message
    starts "path:line:" like a compiler's, so editors can jump to it.
    """

    def __init__(self, source, lineno, message, unit="line"):
        self.source = str(source)
        self.lineno = lineno
        self.reason = message
        if lineno is None:
            where = self.source
        elif unit == "line":
            where = f"{self.source}:{lineno}"
        else:
            where = f"{self.source} {unit} {lineno}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Host:
    """One host and how many processes to start on it.

    `max_slots` is Open MPI's hard cap for oversubscription; None when not given. Hydra has no
    such cap and ignores it.
    """
    name: str
    slots: int
    max_slots: Optional[int] = None


# Characters that mean something to a POSIX shell. None can appear in a valid host name, so
# finding one is reported as shell syntax (the likeliest cause) rather than as a bad name.
_SHELL_CHARS = frozenset("`$;&|<>()'\"\\*?{}~!")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)
_COUNT = re.compile(r"[0-9]+", re.ASCII)   # not int(): it also takes "+3", " 3", "3_0", "٣"
_FORMS = "expected 'host:slots' (e.g. 'node1:4') or 'host slots=N' (e.g. 'node1 slots=4')"


def _shell_syntax(text):
    """The first shell metacharacter in `text`, or None."""
    for ch in text:
        if ch in _SHELL_CHARS:
            return ch
    return None


def _check_ipv6(address, as_written):
    try:
        parsed = ipaddress.IPv6Address(address)
    except ValueError:
        raise ValueError(f"{as_written!a} is not an IPv6 address") from None
    if parsed.scope_id is not None:
        # A zone ("%eth0") names an interface of one machine; it means nothing to the other
        # hosts.
        raise ValueError(f"{as_written!a} has an IPv6 zone ('%{parsed.scope_id}'); give the "
                         "host a name or a global address instead")
    return str(parsed)


def _check_host(text):
    """Return the canonical form of host `text`, or raise ValueError saying what is wrong.

    IPv6 addresses come back without brackets and compressed ("fe80::1"); IPv4 addresses and
    names come back as written.
    """
    if not text:
        raise ValueError("the host name is empty")
    if text.startswith("["):
        if not text.endswith("]"):
            raise ValueError(f"{text!a} opens a '[' for an IPv6 address but never closes it")
        return _check_ipv6(text[1:-1], text)
    if ":" in text:
        return _check_ipv6(text, text)
    if all(ch.isdigit() or ch == "." for ch in text):
        # All digits and dots: meant as IPv4. ipaddress refuses octets over 255 and leading
        # zeros (which inet_aton would read as octal).
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            raise ValueError(f"{text!a} is not a valid IPv4 address") from None
    if text.startswith("-"):
        raise ValueError(f"{text!a} starts with '-', which ssh would read as an option")
    if len(text) > 253:
        raise ValueError(f"the host name is {len(text)} characters long; at most 253 are allowed")
    for label in text.split("."):
        if not _LABEL.fullmatch(label):
            bad = next((ch for ch in label if not (ch.isascii() and (ch.isalnum() or ch == "-"))),
                       None)
            if not label:
                why = "an empty label (two dots in a row, or a leading or trailing dot)"
            elif bad is not None:
                why = f"the character {ascii(bad)}"
            elif len(label) > 63:
                why = f"a label of {len(label)} characters (at most 63)"
            else:
                why = f"the label {label!a}, which starts or ends with '-'"
            raise ValueError(f"{text!a} is not a valid host name: it has {why}; expected "
                             "letters, digits and '-' in dot-separated labels (RFC 1123), "
                             "an IPv4 address or an IPv6 address")
    return text


def _check_count(what, text):
    if not _COUNT.fullmatch(text):
        raise ValueError(f"{what} must be a whole number of at least 1, got {text!a}")
    value = int(text)
    if value < 1:
        raise ValueError(f"{what} must be at least 1, got {text}")
    return value


def _parse_host_slots(token):
    """Parse one 'host:slots' token into (name, slots)."""
    if token.startswith("["):
        close = token.find("]")
        if close < 0:
            raise ValueError(f"{token!a} opens a '[' for an IPv6 address but never closes it")
        host, rest = token[:close + 1], token[close + 1:]
        if not rest:
            raise ValueError(f"no slot count after {host!a}; {_FORMS}, got {token!a}")
        if not rest.startswith(":"):
            raise ValueError(f"expected ':slots' after {host!a}, got {rest!a}")
        count = rest[1:]
    else:
        colons = token.count(":")
        if colons == 0:
            raise ValueError(f"no slot count; {_FORMS}, got {token!a}")
        if colons > 1:
            raise ValueError(
                f"{token!a} has {colons} ':'s; {_FORMS}. An IPv6 address needs brackets in "
                "the host:slots form ('[fe80::1]:2') or can be written 'fe80::1 slots=2'")
        host, count = token.split(":")
    return _check_host(host), _check_count("the slot count", count)


def _parse_line(text):
    """Parse one line with its comment already removed into a Host; ValueError if malformed."""
    ch = _shell_syntax(text)
    if ch is not None:
        raise ValueError(f"found {ascii(ch)} in {text!a}; shell syntax is never accepted in a "
                         f"hostfile; {_FORMS}")
    tokens = text.split()
    if len(tokens) == 1:
        name, slots = _parse_host_slots(tokens[0])
        return Host(name, slots)

    try:
        _parse_host_slots(tokens[0])
    except ValueError:
        pass
    else:
        raise ValueError(f"unexpected {' '.join(tokens[1:])!a} after {tokens[0]!a}; a "
                         "'host:slots' line has nothing after it")
    name = _check_host(tokens[0])
    fields = {}
    for token in tokens[1:]:
        key, eq, value = token.partition("=")
        if not eq or key not in ("slots", "max_slots"):
            raise ValueError(f"unexpected {token!a} after the host name; expected 'slots=N' "
                             "and optionally 'max_slots=M'")
        if key in fields:
            raise ValueError(f"'{key}=' is given twice")
        fields[key] = _check_count(f"'{key}='", value)
    if "slots" not in fields:
        raise ValueError(f"no 'slots=N' after {tokens[0]!a}; {_FORMS}")
    slots, max_slots = fields["slots"], fields.get("max_slots")
    if max_slots is not None and max_slots < slots:
        raise ValueError(f"max_slots={max_slots} is less than slots={slots}")
    return Host(name, slots, max_slots)


def _key(name):
    # Host names are case-insensitive (RFC 4343); addresses are already canonical.
    return name.lower()


def _add(hosts, seen, host, source, lineno, unit):
    first = seen.get(_key(host.name))
    if first is not None:
        raise HostfileError(source, lineno,
                            f"host {host.name!a} is already listed on {unit} {first}; list "
                            "each host once, with its total slots", unit)
    seen[_key(host.name)] = lineno
    hosts.append(host)


def parse_hostfile(path) -> List[Host]:
    """Read a hostfile; return its hosts in file order. Raises HostfileError, or OSError if the
    file cannot be read."""
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    hosts, seen = [], {}
    # bytes.splitlines splits at \n, \r\n and \r only (str.splitlines also splits at form
    # feeds and U+2028, which would put the line numbers out of step with an editor's).
    for lineno, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise HostfileError(path, lineno, f"not valid UTF-8 ({e.reason} at byte {e.start})") \
                from None
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            host = _parse_line(text)
        except ValueError as e:
            raise HostfileError(path, lineno, str(e)) from None
        _add(hosts, seen, host, path, lineno, "line")
    if not hosts:
        raise HostfileError(path, None, f"no hosts: every line is blank or a comment; {_FORMS}")
    return hosts


def parse_host_list(text, source="-H") -> List[Host]:
    """Parse a comma-separated host list such as "node1:2,node2:2" (the -H option)."""
    hosts, seen = [], {}
    for number, item in enumerate(text.split(","), start=1):
        item = item.strip()
        try:
            ch = _shell_syntax(item)
            if ch is not None:
                raise ValueError(f"found {ascii(ch)} in {item!a}; shell syntax is never "
                                 "accepted in a host list")
            if not item:
                raise ValueError(f"this item is empty; expected 'host:slots,host:slots', "
                                 f"got {text!a}")
            if any(c.isspace() for c in item):
                raise ValueError(f"expected 'host:slots' without spaces, got {item!a}")
            name, slots = _parse_host_slots(item)
        except ValueError as e:
            raise HostfileError(source, number, str(e), "item") from None
        _add(hosts, seen, Host(name, slots), source, number, "item")
    return hosts


def format_hostfile(hosts, flavour) -> str:
    """Write `hosts` in the hostfile format of `flavour`: "hydra" (MPICH) or "openmpi"."""
    if flavour == "hydra":
        lines = []
        for host in hosts:
            if ":" in host.name:
                # Hydra splits each hostfile entry at every ':' (strtok in its hostfile
                # reader), so no spelling of an IPv6 address survives it.
                raise ValueError(f"MPICH's Hydra cannot take the IPv6 address {host.name!a} "
                                 "in a hostfile (it cuts entries at ':'); give the host a name "
                                 "in /etc/hosts or DNS and use that")
            lines.append(f"{host.name}:{host.slots}")
    elif flavour == "openmpi":
        lines = [f"{h.name} slots={h.slots}" + ("" if h.max_slots is None
                                                  else f" max_slots={h.max_slots}")
                 for h in hosts]
    else:
        raise ValueError(f"unknown MPI flavour {flavour!a}; expected 'hydra' or 'openmpi'")
    return "".join(line + "\n" for line in lines)
