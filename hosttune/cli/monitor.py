"""hosttune status / watch / exporter.

``status_app`` is a Typer group whose callback is the snapshot (``hosttune status``); other
modules may add subcommands to it (``status gpu``). ``status``, ``watch`` and ``exporter`` are
plain importable functions."""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from hosttune.cli import status as status_cmds
from hosttune.cli.common import (
    EXIT_FINDINGS,
    EXIT_OK,
    JsonOpt,
    ProfileOpt,
    RootOpt,
    console,
    emit_json,
    err_console,
    fail,
    make_host,
    run_guarded,
)

if TYPE_CHECKING:
    from hosttune.monitor.snapshot import (
        AuditSummary,
        ContainersReading,
        CpuReading,
        GpusReading,
        HugePagesReading,
        MemLockedReading,
        MemoryReading,
        StoreReading,
        Unavailable,
    )

NoAuditOpt = Annotated[bool, typer.Option("--no-audit", help="Skip the audit summary.")]


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{int(n)} B"


def _page(n: int) -> str:
    from hosttune.profile.sizes import hugepage_size_label

    return hugepage_size_label(n)


def _unavail(title: str, v: Any) -> Text:
    return Text.assemble((f"{title:<10} ", "bold"), (f"unavailable: {v.reason}", "dim"))


def render(snap, *, cpu_pct: dict[str, float] | None = None, width: int = 80):
    """A rich renderable of a snapshot, laid out to stay readable at 80 columns."""
    from hosttune.monitor.snapshot import Unavailable

    sections: list[tuple[str, Any, Callable[[Any], list[Any]]]] = [
        ("CPU", snap.cpu, lambda cpu: _cpu_parts(cpu, width)),
        ("Memory", snap.memory, lambda mem: _memory_parts(mem, snap.memlocked)),
        ("HugePages", snap.hugepages, _hugepage_parts),
        ("Store", snap.store, _store_parts),
        ("Containers", snap.containers, lambda ct: _container_parts(ct, cpu_pct)),
        ("GPU", snap.gpu, _gpu_parts),
        ("Audit", snap.audit, lambda a: _audit_parts(a, width)),
    ]
    parts: list[Any] = []
    for title, reading, draw in sections:
        parts += [_unavail(title, reading)] if isinstance(reading, Unavailable) else draw(reading)
    return Group(*parts)


def _table() -> Table:
    return Table(box=None, header_style="bold", pad_edge=False, padding=(0, 1))


def _cpu_parts(cpu: CpuReading, width: int) -> list[Any]:
    mhz = [(c.cur_freq_hz / 1e6 if c.cur_freq_hz else c.cpuinfo_mhz) for c in cpu.cores]
    vals = [m for m in mhz if m is not None]
    govs = ", ".join(f"{g} x{n}" for g, n in cpu.governors.items())
    head = f"{len(cpu.cores)} CPUs"
    if vals:
        head += f" · {min(vals):.0f}-{max(vals):.0f} MHz (avg {sum(vals) / len(vals):.0f})"
    parts: list[Any] = [
        Text.assemble(("CPU       ", "bold"), head, " · governor ", (govs, "cyan"))]
    if len(cpu.cores) <= 32:
        cells = [f"{c.cpu:>2}:{m:>5.0f}" if m is not None else f"{c.cpu:>2}:    -"
                 for c, m in zip(cpu.cores, mhz, strict=True)]
        per = max(1, (width - 10) // 9)
        for i in range(0, len(cells), per):
            parts.append(Text("          " + " ".join(cells[i:i + per])))
    return parts


def _memory_parts(mem: MemoryReading, ml: MemLockedReading | Unavailable) -> list[Any]:
    """Memory, swap and memlocked on one line."""
    from hosttune.monitor.snapshot import Unavailable

    swap = ("off" if mem.swap_total_bytes == 0 else
            f"{_fmt_bytes(mem.swap_total_bytes - mem.swap_free_bytes)} used of "
            f"{_fmt_bytes(mem.swap_total_bytes)} ({len(mem.swaps)} dev)")
    mls = _fmt_bytes(ml.mlocked_bytes) if not isinstance(ml, Unavailable) else "?"
    return [Text.assemble(
        ("Memory    ", "bold"),
        f"{_fmt_bytes(mem.available_bytes)} avail of {_fmt_bytes(mem.total_bytes)}"
        f" · MemLocked {mls} · swap ",
        (swap, "green" if swap == "off" else "yellow"))]


def _hugepage_parts(hp: HugePagesReading) -> list[Any]:
    t = _table()
    for col in ("huge pages", "node", "total", "free", "resv", "surp", "bytes"):
        t.add_column(col, justify="left" if col in ("huge pages", "node") else "right")
    for p in hp.pools:
        t.add_row(_page(p.page_size_bytes), "all" if p.node is None else str(p.node),
                  str(p.total), str(p.free), "-" if p.reserved is None else str(p.reserved),
                  str(p.surplus), _fmt_bytes(p.total * p.page_size_bytes))
    saved = ("" if hp.vmemmap_saved_bytes is None or hp.hvo != "on" else
             f" · saves {_fmt_bytes(hp.vmemmap_saved_bytes)} of struct pages")
    return [t, Text.assemble(("HVO       ", "bold"), f"{hp.hvo}{saved}")]


def _store_parts(st: StoreReading) -> list[Any]:
    t = _table()
    t.add_column("model store", overflow="fold", max_width=36)
    for col in ("page", "used", "limit", "files"):
        t.add_column(col, justify="right")
    for m in st.mounts:
        t.add_row(escape(m.mount_point), _page(m.page_size_bytes), _fmt_bytes(m.used_bytes),
                  _fmt_bytes(m.size_limit_bytes), str(len(m.files)))
    return [t]


def _container_parts(ct: ContainersReading, cpu_pct: dict[str, float] | None) -> list[Any]:
    if not ct.containers:
        return [Text.assemble(("Containers", "bold"), f" none (cgroup v{ct.cgroup_version})")]
    t = _table()
    t.add_column("container", overflow="ellipsis", max_width=20, no_wrap=True)
    for col in ("cpu", "memory", "VmLck"):
        t.add_column(col, justify="right")
    t.add_column("cpuset", overflow="fold", max_width=24)
    for c in ct.containers:
        pct = (cpu_pct or {}).get(c.id)
        cpu_s = f"{pct:.0f}%" if pct is not None else (
            f"{c.cpu_seconds:.0f}s" if c.cpu_seconds is not None else "-")
        cs_text = Text(_cpus(c.cpuset) + " ")
        cs_text.append("ok" if c.cpuset_compliant else "; ".join(c.cpuset_findings),
                       style="green" if c.cpuset_compliant else "red")
        t.add_row(escape(c.name), cpu_s, _fmt_bytes(c.memory_bytes),
                  _fmt_bytes(c.vmlck_bytes), cs_text)
    return [t, Text(ct.note, style="dim")] if ct.note else [t]


def _gpu_parts(g: GpusReading) -> list[Any]:
    t = _table()
    t.add_column("gpu", overflow="ellipsis", max_width=22, no_wrap=True)
    for col in ("power", "limit", "sm", "mem"):
        t.add_column(col, justify="right")
    t.add_column("mode")
    for gr in g.gpus:
        def opt(v, fmt, field, gr=gr):
            if v is not None:
                return fmt(v)
            return "unsupported" if field in gr.unsupported else "-"
        t.add_row(escape(f"{gr.index} {gr.name}"),
                  opt(gr.power_w, lambda v: f"{v:.0f} W", "power"),
                  opt(gr.power_limit_w, lambda v: f"{v:.0f} W", "power_limit"),
                  opt(gr.sm_clock_hz, lambda v: f"{v / 1e6:.0f} MHz", "sm_clock"),
                  opt(gr.mem_clock_hz, lambda v: f"{v / 1e6:.0f} MHz", "mem_clock"),
                  opt(gr.compute_mode, str, "compute_mode"))
    return [t]


def _audit_parts(a: AuditSummary, width: int) -> list[Any]:
    age = max(0.0, time.time() - a.at)
    style = "bold red" if a.drift else "green"
    parts: list[Any] = [Text.assemble(
        ("Audit     ", "bold"), f"profile {a.profile}: ", (f"{a.drift} drift", style),
        f" of {len(a.rows)} settings · {age:.0f}s ago")]
    for r in [r for r in a.rows if not r.compliant][:6]:
        parts.append(Text(f"          {r.tunable} {r.key}: {r.status}"[:width - 1], style="red"))
    return parts


def _cpus(cpus) -> str:
    from hosttune.host.parsers import format_cpulist

    return format_cpulist(list(cpus))


# --- status -------------------------------------------------------------------------------------
status_app = typer.Typer(help="What the host is doing now (snapshot).",
                         invoke_without_command=True, no_args_is_help=False)


def status(
    root: RootOpt = None,
    json_out: JsonOpt = False,
    profile: ProfileOpt = None,
    no_audit: NoAuditOpt = False,
) -> None:
    """One snapshot: CPU MHz/governor, memory, huge pages, MemLocked, model store, containers,
    GPUs and the audit summary. Exit 1 when settings drift."""
    from hosttune.monitor import collect
    from hosttune.monitor.snapshot import AuditSummary

    host = make_host(root)
    snap = run_guarded(collect, host, profile, with_audit=not no_audit)
    if json_out:
        emit_json(snap.to_json())
    else:
        title = "hosttune status" + (f" · root {host.root}" if host.offline else "")
        console.print(Text(title, style="bold underline"))
        console.print(render(snap, width=console.width))
    drift = isinstance(snap.audit, AuditSummary) and snap.audit.drift > 0
    raise typer.Exit(EXIT_FINDINGS if drift else EXIT_OK)


@status_app.callback(invoke_without_command=True)
def status_group(
    ctx: typer.Context,
    root: RootOpt = None,
    json_out: JsonOpt = False,
    profile: ProfileOpt = None,
    no_audit: NoAuditOpt = False,
) -> None:
    """One snapshot of the host (subcommands add detail)."""
    if ctx.invoked_subcommand is None:
        status(root=root, json_out=json_out, profile=profile, no_audit=no_audit)


status_app.command("gpu")(status_cmds.gpu)  # NVIDIA detail: hosttune status gpu


# --- watch --------------------------------------------------------------------------------------
class _Keys:
    """Raw (cbreak) terminal input, restored on exit. Without a terminal: no keys."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno() if sys.stdin.isatty() else None
        self.saved: Any = None

    def __enter__(self) -> _Keys:
        if self.fd is not None:
            import termios
            import tty

            self.saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None and self.saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)

    def wait(self, timeout: float) -> str:
        """Sleep up to ``timeout`` s; return the key pressed ('' if none)."""
        if self.fd is None:
            time.sleep(timeout)
            return ""
        r, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not r:
            return ""
        return os.read(self.fd, 32).decode(errors="replace")


def watch(
    interval: Annotated[float, typer.Option("--interval", "-n", min=0.2,
                                            help="Seconds between refreshes.")] = 1.0,
    root: RootOpt = None,
    profile: ProfileOpt = None,
    audit_interval: Annotated[float, typer.Option(
        "--audit-interval", min=1.0, help="Seconds between audits (the costly part).")] = 60.0,
    no_audit: NoAuditOpt = False,
    count: Annotated[int, typer.Option("--count", min=0,
                                       help="Stop after N refreshes (0: until q).")] = 0,
) -> None:
    """Live view of the status snapshot, refreshed in place; q quits."""
    from rich.live import Live

    from hosttune.monitor.snapshot import ContainersReading, Monitor

    host = make_host(root)
    mon = Monitor(host, profile, audit_interval_s=audit_interval, with_audit=not no_audit)
    if mon.audit is not None:
        mon.audit.start()  # background thread: a tick never waits for the audit
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    prev: dict[str, tuple[float, float]] = {}
    ticks = 0

    def frame():
        nonlocal prev
        snap = mon.snapshot()
        now = time.monotonic()
        pct: dict[str, float] = {}
        if isinstance(snap.containers, ContainersReading):
            cur = {}
            for c in snap.containers.containers:
                if c.cpu_seconds is None:
                    continue
                cur[c.id] = (now, c.cpu_seconds)
                if c.id in prev and now > prev[c.id][0]:
                    pct[c.id] = 100 * (c.cpu_seconds - prev[c.id][1]) / (now - prev[c.id][0])
            prev = cur
        head = Text.assemble(("hosttune watch", "bold"),
                             f" · {time.strftime('%H:%M:%S')} · every {interval:g}s · ",
                             ("q", "bold"), " quits")
        return Group(head, render(snap, cpu_pct=pct, width=min(console.width, 100)))

    try:
        with _Keys() as keys, Live(frame(), console=console, auto_refresh=False,
                                   screen=console.is_terminal, transient=False) as live:
            while not stop.is_set():
                key = keys.wait(interval)
                if key and key.lower().startswith("q"):
                    break
                ticks += 1
                if count and ticks >= count:
                    break
                live.update(frame(), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        if mon.audit is not None:
            mon.audit.stop()


# --- exporter -----------------------------------------------------------------------------------
def exporter(
    listen: Annotated[str, typer.Option("--listen", help="ADDRESS:PORT to serve /metrics on "
                                        "(port 0: any free port).")] = "127.0.0.1:9866",
    profile: ProfileOpt = None,
    root: RootOpt = None,
    audit_interval: Annotated[float, typer.Option(
        "--audit-interval", min=1.0, help="Seconds between background audits.")] = 60.0,
    allow_remote: Annotated[bool, typer.Option(
        "--allow-remote", help="Allow a non-loopback address (metrics reveal host layout).")]
    = False,
) -> None:
    """Prometheus exporter (base units). Loopback only unless --allow-remote."""
    from hosttune.monitor import exporter as exp
    from hosttune.monitor.snapshot import Monitor

    addr, port = run_guarded(exp.parse_listen, listen)
    if not exp.is_loopback(addr) and not allow_remote:
        fail(f"--listen {listen}: not a loopback address; add --allow-remote if you mean it")
    host = make_host(root)
    mon = Monitor(host, profile, audit_interval_s=audit_interval)
    server = run_guarded(exp.start, mon, addr, port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    shown = f"[{addr}]" if ":" in addr else addr
    err_console.print(f"serving http://{shown}:{server.port}/metrics", markup=False)
    sys.stderr.flush()
    try:
        while not stop.wait(3600):
            pass
    finally:
        server.stop()
