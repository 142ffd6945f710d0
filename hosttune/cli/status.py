"""hosttune status ... - live snapshots (read-only, no root needed).

``hosttune status`` alone is the host snapshot (cli/monitor.py, the group's callback);
``status gpu`` is the NVIDIA part, registered on that group in cli/__init__.py."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from hosttune.cli.common import (
    EXIT_FINDINGS,
    EXIT_OK,
    JsonOpt,
    RootOpt,
    console,
    emit_json,
    make_host,
    run_guarded,
)


def _w(v) -> str:
    return "—" if v is None else f"{v:g} W"


def _mhz(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, list):
        return f"{v[0]} MHz" if v[0] == v[1] else f"{v[0]}-{v[1]} MHz"
    return f"{v} MHz" if isinstance(v, int) else str(v)


def _gib(v) -> str:
    return "—" if v is None else f"{v / 2**30:.1f} GiB"


def gpu(root: RootOpt = None, json_out: JsonOpt = False) -> None:
    """NVIDIA GPUs: persistence, power, clocks, compute mode, PCIe link, memory, temperature,
    clock event reasons. Exit 1 when something needs a look (down-trained link, hardware
    slowdown)."""
    from hosttune.host.gpu.status import snapshot

    host = make_host(root)
    snap = run_guarded(snapshot, host)
    if json_out:
        emit_json(snap.to_json())
        raise typer.Exit(EXIT_FINDINGS if snap.findings else EXIT_OK)
    if snap.driver_state != "ok":
        console.print(f"[dim]{escape(snap.driver_message)}[/]")
        for g in snap.gpus:
            console.print(f"gpu{g.data['index']} {escape(g.data['name'])} "
                          f"{escape(g.data.get('pci_bus_id', ''))}")
        raise typer.Exit(EXIT_OK)
    d = snap.to_json()["driver"]
    console.print(f"driver {escape(str(d.get('driver_version', '?')))} · NVML "
                  f"{escape(str(d.get('nvml_version', '?')))}")
    for g in snap.gpus:
        x = g.data
        t = Table(title=escape(f"gpu{x['index']} · {x['name']} · {x['pci_bus_id']}"),
                  show_header=False)
        t.add_column("field", style="bold")
        t.add_column("value", overflow="fold")
        p, c, link, mem = x["power"], x["clocks"], x["pcie"], x["memory"]
        pm = x["persistence_mode"]
        t.add_row("persistence", "—" if pm is None else ("enabled" if pm else "disabled"))
        t.add_row("power", f"{_w(p['usage_w'])} of {_w(p['limit_w'])} (default "
                  f"{_w(p['default_limit_w'])}, allowed {_w(p['min_limit_w'])}-"
                  f"{_w(p['max_limit_w'])})")
        t.add_row("clocks", f"graphics {_mhz(c['graphics_mhz'])} (max "
                  f"{_mhz(c['max_graphics_mhz'])}), memory {_mhz(c['memory_mhz'])} (max "
                  f"{_mhz(c['max_memory_mhz'])})")
        t.add_row("locked by hosttune", f"graphics {_mhz(c['locked_graphics_mhz'])}, memory "
                  f"{_mhz(c['locked_memory_mhz'])}")
        t.add_row("compute mode", escape(x["compute_mode"] or "—"))
        if link:
            flag = " [bold red]down-trained[/]" if link["downtrained"] else ""
            t.add_row("PCIe", f"gen {link['gen']}/{link['max_gen']} x{link['width']}/"
                      f"x{link['max_width']}{flag}" + (f" [dim]({escape(link['note'])})[/]"
                                                       if link.get("note") else ""))
        if mem:
            t.add_row("memory", f"{_gib(mem['used_bytes'])} used, {_gib(mem['free_bytes'])} "
                      f"free of {_gib(mem['total_bytes'])}")
        temp = x["temperature_c"]
        t.add_row("temperature", "—" if temp is None else f"{temp} °C")
        t.add_row("clock event reasons",
                  escape(", ".join(x["clock_event_reasons"] or []) or "none"))
        for k, why in x["unavailable"].items():
            t.add_row(f"[dim]{escape(k)}[/]", f"[dim]{escape(why)}[/]")
        console.print(t)
    for f in snap.findings:
        console.print(f"[yellow]![/] {escape(f)}")
    raise typer.Exit(EXIT_FINDINGS if snap.findings else EXIT_OK)
