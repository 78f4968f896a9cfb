"""ringreduce.launch.hostfile: both formats, comments, CRLF, and every error with its line number."""
import pytest

from ringreduce.launch.hostfile import Host, HostfileError, format_hostfile, parse_host_list, \
    parse_hostfile


def write(tmp_path, text, name="hosts"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def error(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(HostfileError) as info:
        parse_hostfile(path)
    return info.value, str(path)


def test_both_formats_comments_and_blank_lines(tmp_path):
    path = write(tmp_path, "# cluster\n\nnode1:4\n  node2 slots=2   # trailing comment\n"
                           "\t\n10.0.0.3:1\n[fd00::3]:2\nfd00::4 slots=3 max_slots=6\n")
    assert parse_hostfile(path) == [Host("node1", 4), Host("node2", 2), Host("10.0.0.3", 1),
                                    Host("fd00::3", 2), Host("fd00::4", 3, 6)]


def test_crlf_and_byte_order_mark(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbf# made on Windows\r\nnode1:2\r\n\r\nnode2 slots=2\r\n")
    assert parse_hostfile(path) == [Host("node1", 2), Host("node2", 2)]


def test_crlf_line_numbers_stay_right(tmp_path):
    err, path = error(tmp_path, b"a:1\r\n\r\n# c\r\nb:0\r\n")
    assert err.lineno == 4 and str(err).startswith(f"{path}:4: ")


def test_ipv6_is_canonicalised(tmp_path):
    path = write(tmp_path, "[FD00:0:0::0003]:2\n")
    assert parse_hostfile(path) == [Host("fd00::3", 2)]


def test_shipped_examples_parse():
    import os
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "hostfiles")
    assert parse_hostfile(os.path.join(here, "localhost")) == [Host("localhost", 2)]
    assert [h.name for h in parse_hostfile(os.path.join(here, "example-mpich"))] == \
        ["node1", "node2", "10.0.0.13"]
    assert parse_hostfile(os.path.join(here, "example-openmpi"))[1] == Host("node2", 4, 8)


# Each malformed line, put on line 3 after a comment and a blank line, with a fragment the
# message must contain (what was expected or what was given).
BAD_LINES = [
    ("node1", "no slot count"),
    ("node1 ", "no slot count"),
    ("node1:", "got ''"),
    ("node1:0", "at least 1, got 0"),
    ("node1:-1", "got '-1'"),
    ("node1:x", "whole number"),
    ("node1:+3", "got '+3'"),
    ("node1:3_0", "got '3_0'"),
    ("node1:\u0663", "whole number"),  # an Arabic-Indic digit: int() would take it
    ("node1:2.5", "got '2.5'"),
    ("node1 slots=0", "at least 1"),
    ("node1 slots=", "got ''"),
    ("node1 slots=two", "got 'two'"),
    ("node1 slot=2", "expected 'slots=N'"),
    ("node1 slots 2", "unexpected 'slots'"),
    ("node1 slots=2 slots=3", "given twice"),
    ("node1 max_slots=4", "no 'slots=N'"),
    ("node1 slots=4 max_slots=2", "max_slots=2 is less than slots=4"),
    ("node1:2 slots=2", "nothing after it"),
    ("node1:2 node2:2", "nothing after it"),
    ("node1:2:3", "has 2 ':'s"),
    ("fe80::1:2", "needs brackets"),
    ("[fe80::1]", "no slot count after '[fe80::1]'"),
    ("[fe80::1]2", "expected ':slots'"),
    ("[fe80::1:2", "never closes"),
    ("[nothex]:2", "not an IPv6 address"),
    ("[fe80::1%eth0]:2", "IPv6 zone"),
    ("256.1.1.1:2", "not a valid IPv4 address"),
    ("10.0.0:2", "not a valid IPv4 address"),
    ("010.0.0.1:2", "not a valid IPv4 address"),
    ("node_1:2", "the character '_'"),
    ("n\u00f6de:2", "the character '\\xf6'"),
    ("a..b:2", "empty label"),
    (".a:2", "empty label"),
    ("a-:2", "starts or ends with '-'"),
    ("x" * 64 + ":2", "64 characters"),
    (".".join(["abcdefgh"] * 30) + ":1", "at most 253"),
    ("-oProxyCommand=x:2", "ssh would read as an option"),
    ("node1,node2:2", "the character ','"),
    ("node1:2 junk", "nothing after it"),
    ("node1 slots=2 junk", "unexpected 'junk'"),
    ("=2", "no slot count"),
    ("node=1:2", "the character '='"),
]

# Shell syntax is refused outright, whatever else is on the line.
HOSTILE_LINES = [
    "$(reboot):2", "`reboot`:2", "node1:2;reboot", "node1;reboot slots=2", "node1|nc:2",
    "node1&:2", "node1>x:2", "node1<x:2", "'node1':2", '"node1":2', "node1\\:2", "node*:2",
    "node?:2", "{a,b}:2", "~root:2", "!1:2", "node1 slots=$(id)", "(node1):2",
]


@pytest.mark.parametrize("line,fragment", BAD_LINES)
def test_malformed_line_names_file_line_and_problem(tmp_path, line, fragment):
    err, path = error(tmp_path, f"# hosts\n\n{line}\nnode9:1\n")
    assert err.source == path and err.lineno == 3
    assert str(err).startswith(f"{path}:3: ")
    assert fragment in str(err)


@pytest.mark.parametrize("line", HOSTILE_LINES)
def test_shell_syntax_is_refused(tmp_path, line):
    err, path = error(tmp_path, f"good:1\n{line}\n")
    assert err.lineno == 2 and "shell syntax" in str(err)


def test_comment_hides_anything(tmp_path):
    # After '#' nothing is parsed, and nothing of it is kept.
    assert parse_hostfile(write(tmp_path, "node1:2 # $(reboot); `x`\n")) == [Host("node1", 2)]


def test_control_characters_are_shown_escaped(tmp_path):
    # A terminal escape in a hostfile must not reach the terminal raw through the message.
    err, _ = error(tmp_path, "node\x1b[31m:2\n")
    assert "\x1b" not in str(err) and "\\x1b" in str(err)


def test_duplicate_host_is_an_error_naming_both_lines(tmp_path):
    err, path = error(tmp_path, "node1:2\nnode2:2\nNODE1 slots=2\n")
    assert err.lineno == 3 and "already listed on line 1" in str(err)


def test_duplicate_ipv6_in_two_spellings(tmp_path):
    err, _ = error(tmp_path, "[fd00::1]:2\nfd00:0::1 slots=1\n")
    assert err.lineno == 2 and "'fd00::1'" in str(err)


def test_invalid_utf8_names_the_line(tmp_path):
    err, _ = error(tmp_path, b"node1:2\nnode\xff:2\n")
    assert err.lineno == 2 and "UTF-8" in str(err)


@pytest.mark.parametrize("text", ["", "\n\n", "# only comments\n  # more\n", "\r\n"])
def test_no_hosts_is_an_error(tmp_path, text):
    err, path = error(tmp_path, text)
    assert err.lineno is None and str(err).startswith(f"{path}: no hosts")


def test_missing_file_is_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        parse_hostfile(tmp_path / "absent")


def test_host_list():
    assert parse_host_list("node1:2,node2:2") == [Host("node1", 2), Host("node2", 2)]
    assert parse_host_list(" node1:2 , [::1]:1 ") == [Host("node1", 2), Host("::1", 1)]


@pytest.mark.parametrize("text,item,fragment", [
    ("node1", 1, "no slot count"),
    ("node1:2,", 2, "this item is empty"),
    ("node1:2,,node2:1", 2, "this item is empty"),
    ("node1:2,node2:0", 2, "at least 1"),
    ("node1:2,node2 slots=2", 2, "without spaces"),
    ("node1:2,node1:1", 2, "already listed on item 1"),
    ("node1:2,$(reboot):1", 2, "shell syntax"),
    ("node1:2;reboot", 1, "shell syntax"),
])
def test_host_list_errors_name_the_item(text, item, fragment):
    with pytest.raises(HostfileError) as info:
        parse_host_list(text)
    assert info.value.lineno == item
    assert str(info.value).startswith(f"-H item {item}: ") and fragment in str(info.value)


def test_format_for_each_launcher():
    hosts = [Host("node1", 2), Host("10.0.0.2", 4, 8)]
    assert format_hostfile(hosts, "hydra") == "node1:2\n10.0.0.2:4\n"
    assert format_hostfile(hosts, "openmpi") == "node1 slots=2\n10.0.0.2 slots=4 max_slots=8\n"
    assert format_hostfile([Host("fd00::1", 1)], "openmpi") == "fd00::1 slots=1\n"


def test_hydra_cannot_take_ipv6():
    with pytest.raises(ValueError, match="cannot take the IPv6 address 'fd00::1'"):
        format_hostfile([Host("fd00::1", 1)], "hydra")


def test_written_hostfile_reads_back(tmp_path):
    hosts = [Host("node1", 2), Host("10.0.0.2", 4, 8), Host("fd00::1", 1)]
    for flavour, subset in (("openmpi", hosts), ("hydra", [Host("node1", 2),
                                                           Host("10.0.0.2", 4)])):
        path = write(tmp_path, format_hostfile(subset, flavour), flavour)
        assert parse_hostfile(path) == subset
