"""The hosts and slots of a batch scheduler's allocation, read from the variables it sets.

Inside an allocation, `ringreduce-run` without -H or --hostfile runs on the allocation's hosts:

    Slurm  SLURM_JOB_NODELIST   node[01-03,07],gpu5        (compressed host list)
           SLURM_TASKS_PER_NODE 2(x3),1                    (tasks of each node, in order)
    PBS    PBS_NODEFILE         a file naming one host per slot (a host on 4 lines: 4 slots)
    LSF    LSB_MCPU_HOSTS       host1 4 host2 4            (host, slots, host, slots, ...)

Hosts keep the scheduler's order, so rank 0 lands on the first one: Slurm runs the batch script
on the first node of the allocation, PBS lists the mother superior first and LSF the execution
host, so that is the host `ringreduce-run` is started on.

Slurm's host lists: items separated by commas outside brackets; each item is text with bracket
groups `[a-b,c]` of numbers or ranges, and several groups make every combination
(`r[1-2]n[1-2]` is r1n1, r1n2, r2n1, r2n2). A range keeps the width of its first number, so
`n[08-10]` is n08, n09, n10. Task counts are `N` or `N(xM)` (N tasks on each of M nodes).

Every host name passes the same check as a hostfile's (no shell syntax, nothing starting with
'-'), and a malformed value is a HostfileError naming the variable (or file and line), what was
expected and what was found. No MPI here, and nothing is read but the given mapping and files.
"""
import re

from .hostfile import Host, HostfileError, _check_host, _check_count

__all__ = ["expand_nodelist", "expand_tasks_per_node", "slurm_hosts", "pbs_hosts", "lsf_hosts",
           "allocation_hosts"]

# A typo such as node[1-1000000000] would otherwise build a list of a billion names; no
# scheduler hands out more nodes than this (Slurm's own limit is 65533).
MAX_HOSTS = 1 << 20

_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?", re.ASCII)
_TASKS = re.compile(r"([0-9]+)(?:\(x([0-9]+)\))?", re.ASCII)


def _split_top_level(text):
    """Split at the commas outside brackets; ValueError for unbalanced or nested brackets."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            if depth:
                raise ValueError(f"a '[' inside brackets at character {i + 1} of "
                                 f"{text!a}; expected 'prefix[1-3,5]' groups")
            depth = 1
        elif ch == "]":
            if not depth:
                raise ValueError(f"a ']' with no '[' before it at character {i + 1} "
                                 f"of {text!a}")
            depth = 0
        elif ch == "," and not depth:
            items.append((start, text[start:i]))
            start = i + 1
    if depth:
        raise ValueError(f"a '[' that is never closed in {text!a}")
    items.append((start, text[start:]))
    return items


def _expand_group(body, item):
    """The numbers of one bracket group such as '01-03,07', as strings of their width."""
    out = []
    for part in body.split(","):
        m = _RANGE.fullmatch(part)
        if m is None:
            raise ValueError(f"expected numbers or ranges like '01-03' inside the brackets "
                             f"of {item!a}, got {part!a}")
        lo, hi = m.group(1), m.group(2) if m.group(2) is not None else m.group(1)
        if int(hi) < int(lo):
            raise ValueError(f"the range {part!a} in {item!a} runs backwards")
        if int(hi) - int(lo) >= MAX_HOSTS:
            raise ValueError(f"the range {part!a} in {item!a} names more than {MAX_HOSTS} "
                             "hosts")
        out += [str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1)]
    return out


def expand_nodelist(text):
    """Slurm's compressed host list ('node[01-03,07],gpu5') as a list of names, in order."""
    text = text.strip()
    if not text:
        raise ValueError("the host list is empty; expected names such as 'node[01-03],gpu5'")
    names = []
    for start, item in _split_top_level(text):
        if not item:
            raise ValueError(f"an empty item at character {start + 1} of {text!a}")
        expanded = [""]
        for piece in re.split(r"(\[[^\]]*\])", item):
            if piece.startswith("["):
                numbers = _expand_group(piece[1:-1], item)
                expanded = [e + n for e in expanded for n in numbers]
            else:
                expanded = [e + piece for e in expanded]
            if len(names) + len(expanded) > MAX_HOSTS:
                raise ValueError(f"{text!a} names more than {MAX_HOSTS} hosts")
        names += expanded
    return names


def expand_tasks_per_node(text):
    """Slurm's per-node counts ('2(x3),1') as a list of ints, one per node ([2, 2, 2, 1])."""
    counts = []
    for item in text.strip().split(","):
        m = _TASKS.fullmatch(item.strip())
        if m is None:
            raise ValueError(f"expected counts such as '2(x3),1' (N, or N(xM) for M nodes of "
                             f"N), got {item!a} in {text!a}")
        n = _check_count(f"the count in {item!a}", m.group(1))
        repeat = 1 if m.group(2) is None else _check_count(f"the repeat in {item!a}",
                                                            m.group(2))
        if len(counts) + repeat > MAX_HOSTS:
            raise ValueError(f"{text!a} gives counts for more than {MAX_HOSTS} nodes")
        counts += [n] * repeat
    return counts


def _hosts(pairs, source, unit):
    """Hosts from (name, slots, position) triples, each name checked, none twice."""
    hosts, seen = [], {}
    for name, slots, position in pairs:
        try:
            name = _check_host(name)
        except ValueError as e:
            raise HostfileError(source, position, str(e), unit) from None
        first = seen.setdefault(name.lower(), position)
        if first != position:
            raise HostfileError(source, position, f"host {name!a} is already listed as "
                                f"{unit} {first}", unit)
        hosts.append(Host(name, slots))
    return hosts


def _expanded(expand, var, env):
    try:
        return expand(env[var])
    except ValueError as e:
        raise HostfileError(var, None, str(e)) from None


def slurm_hosts(env):
    """Hosts of a Slurm allocation from SLURM_JOB_NODELIST and SLURM_TASKS_PER_NODE."""
    var = "SLURM_JOB_NODELIST" if "SLURM_JOB_NODELIST" in env else "SLURM_NODELIST"
    if "SLURM_TASKS_PER_NODE" not in env:
        raise HostfileError(var, None, f"{var} is set but SLURM_TASKS_PER_NODE is not; "
                            "expected both, as sbatch, salloc and srun set them")
    names = _expanded(expand_nodelist, var, env)
    counts = _expanded(expand_tasks_per_node, "SLURM_TASKS_PER_NODE", env)
    if len(counts) != len(names):
        raise HostfileError(var, None, f"{env[var]!a} names {len(names)} node(s) but "
                            f"SLURM_TASKS_PER_NODE={env['SLURM_TASKS_PER_NODE']!a} gives "
                            f"counts for {len(counts)}; expected one count per node")
    return _hosts(((n, c, i) for i, (n, c) in enumerate(zip(names, counts), start=1)), var,
                  "node")


def pbs_hosts(path):
    """Hosts of a PBS allocation from PBS_NODEFILE, one line per slot; a host's slots are its
    lines, and hosts keep the order of their first line. OSError if it cannot be read."""
    with open(path, "rb") as f:
        data = f.read()
    slots, first_line = {}, {}
    for lineno, raw in enumerate(data.splitlines(), start=1):
        try:
            name = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise HostfileError(path, lineno, f"not valid UTF-8 ({e.reason} at byte {e.start})") \
                from None
        if not name:
            continue
        try:
            name = _check_host(name)
        except ValueError as e:
            raise HostfileError(path, lineno, f"{e}; expected one host name per line") from None
        first_line.setdefault(name.lower(), (lineno, name))
        slots[name.lower()] = slots.get(name.lower(), 0) + 1
    if not slots:
        raise HostfileError(path, None, "no hosts: expected one host name per line, one line "
                            "per slot")
    return [Host(name, slots[key]) for key, (_, name) in first_line.items()]


def lsf_hosts(text):
    """Hosts of an LSF allocation from LSB_MCPU_HOSTS ('host1 4 host2 4')."""
    words = text.split()
    if not words or len(words) % 2:
        raise HostfileError("LSB_MCPU_HOSTS", None, "expected pairs of host and slots such "
                            f"as 'host1 4 host2 4', got {len(words)} word(s): {text!a}")
    pairs = []
    for i in range(0, len(words), 2):
        try:
            count = _check_count(f"the slots of {words[i]!a}", words[i + 1])
        except ValueError as e:
            raise HostfileError("LSB_MCPU_HOSTS", i // 2 + 1, str(e), "pair") from None
        pairs.append((words[i], count, i // 2 + 1))
    return _hosts(pairs, "LSB_MCPU_HOSTS", "pair")


_SCHEDULERS = (("Slurm", ("SLURM_JOB_NODELIST", "SLURM_NODELIST")), ("PBS", ("PBS_NODEFILE",)),
               ("LSF", ("LSB_MCPU_HOSTS",)))


def allocation_hosts(env):
    """(scheduler, hosts, description) of the allocation `env` describes, scheduler being
    'Slurm', 'PBS' or 'LSF'; None outside one.
    Raises HostfileError for a malformed allocation, and for the variables of two schedulers at
    once (which one to believe would be a guess); OSError if PBS_NODEFILE cannot be read."""
    found = [(name, next(v for v in names if v in env)) for name, names in _SCHEDULERS
             if any(v in env for v in names)]
    if not found:
        return None
    if len(found) > 1:
        listing = " and ".join(f"{name} ({var})" for name, var in found)
        raise HostfileError(found[0][1], None, f"found the variables of {listing}; expected "
                            "one scheduler's allocation. Pass -H or --hostfile to choose")
    name, var = found[0]
    if name == "Slurm":
        hosts = slurm_hosts(env)
        return name, hosts, (f"the Slurm allocation ({var}={env[var]}, SLURM_TASKS_PER_NODE="
                       f"{env['SLURM_TASKS_PER_NODE']})")
    if name == "PBS":
        return name, pbs_hosts(env[var]), f"the PBS allocation (PBS_NODEFILE={env[var]})"
    return name, lsf_hosts(env[var]), f"the LSF allocation (LSB_MCPU_HOSTS={env[var]})"
