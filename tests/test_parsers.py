"""Parsers on literal file contents (as the kernel prints them)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hosttune.host import parsers as P

MEMINFO = """MemTotal:       24684008 kB
MemFree:        23500000 kB
HugePages_Total:      64
HugePages_Free:       60
HugePages_Rsvd:        2
Hugepagesize:       2048 kB
"""

SWAPS = """Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority
/swap.img                               file\t\t8388604\t\t0\t\t-2
/dev/nvme0n1p3                          partition\t16777212\t1024\t\t-3
/var/tmp/my\\040swap                      file\t\t65532\t\t0\t\t5
"""

LIMITS = """Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max locked memory         8388608              8388608              bytes     
Max realtime timeout      unlimited            unlimited            us        
"""  # noqa: W291 - the kernel pads columns with trailing spaces

MOUNTINFO = (
    "22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    "98 22 0:45 / /mnt/models\\040hp rw,relatime shared:50 - hugetlbfs none "
    "rw,pagesize=2M,size=1073741824\n"
)


def test_meminfo_units():
    m = P.parse_meminfo(MEMINFO)
    assert m["MemTotal"] == 24684008 * 1024
    assert m["HugePages_Total"] == 64  # a count, not bytes
    assert m["Hugepagesize"] == 2 * 1024 * 1024


def test_swaps():
    s = P.parse_swaps(SWAPS)
    assert [d.path for d in s] == ["/swap.img", "/dev/nvme0n1p3", "/var/tmp/my swap"]
    assert s[1].type == "partition" and s[1].used_bytes == 1024 * 1024
    assert s[2].priority == 5


def test_limits():
    lim = P.parse_limits(LIMITS)
    assert lim["Max locked memory"] == (8388608, 8388608)
    assert lim["Max cpu time"] == (None, None)


def test_mountinfo_escapes_and_options():
    (root, hp) = P.parse_mountinfo(MOUNTINFO)
    assert root.mount_point == "/" and root.fstype == "ext4"
    assert hp.mount_point == "/mnt/models hp"
    assert hp.fstype == "hugetlbfs"
    assert hp.options["pagesize"] == "2M" and hp.options["size"] == "1073741824"


def test_cmdline_stops_at_double_dash():
    t = P.parse_cmdline('BOOT_IMAGE=/vmlinuz quiet foo="a b" -- --init-arg\n')
    assert t == ["BOOT_IMAGE=/vmlinuz", "quiet", "foo=a b"]


def test_fstab():
    text = "# c\nUUID=1 / ext4 defaults 0 1\n\n/swap.img none swap sw 0 0\nproc /proc proc\n"
    e = P.parse_fstab(text)
    assert [(x.lineno, x.vfstype) for x in e] == [(2, "ext4"), (4, "swap"), (5, "proc")]
    assert e[2].options == "defaults"


def test_sysctl_conf():
    text = "# c\n; c\nvm.swappiness = 10\nnet/ipv4/ip_forward=1\n-kernel.foo = 2\nbad line\n"
    a = P.parse_sysctl_conf(text)
    assert [(x.key, x.value, x.lineno) for x in a] == [
        ("vm.swappiness", "10", 3), ("net.ipv4.ip_forward", "1", 4), ("kernel.foo", "2", 5)]
    assert a[2].ignore_errors
    # an inline comment is NOT a comment in sysctl.d(5): it is part of the value
    (x,) = P.parse_sysctl_conf("vm.swappiness = 0   # off\n")
    assert x.value == "0   # off"


def test_bracketed_choice():
    assert P.parse_bracketed_choice("always [madvise] never") == (
        "madvise", ["always", "madvise", "never"])


def test_cpulist_examples():
    assert P.parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert P.parse_cpulist("") == []
    assert P.parse_cpulist("0-7:2/4") == [0, 1, 4, 5]
    assert P.format_cpulist([3, 1, 2, 8]) == "1-3,8"


@given(st.sets(st.integers(0, 511)))
def test_cpulist_round_trip(cpus):
    assert P.parse_cpulist(P.format_cpulist(cpus)) == sorted(cpus)


@pytest.mark.parametrize(("text", "parsed"), [
    ("2M", (2 << 20, "")), ("2MiB", (2 << 20, "iB")), ("1g", (1 << 30, "")),
    ("2097152", (2 << 20, "")), ("0x200000", (2 << 20, "")), ("010", (8, "")),
    ("50%", (50, "%")), ("0", (0, "")), ("bogus", None), ("", None)])
def test_memparse_reads_sizes_like_the_kernel(text, parsed):
    # lib/cmdline.c: simple_strtoull(base 0), then one K/M/G/T/P/E suffix; the rest is the
    # caller's (hugetlbfs size= takes a trailing '%')
    assert P.memparse(text) == parsed
