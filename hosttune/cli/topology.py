"""hosttune topology"""

from __future__ import annotations

from rich.markup import escape

from hosttune.cli.common import JsonOpt, RootOpt, console, emit_json, make_host, run_guarded


def topology(root: RootOpt = None, json_out: JsonOpt = False) -> None:
    """Packages, NUMA nodes, L3 domains (CCDs), cores and SMT siblings, isolated CPUs, GPUs."""
    from hosttune.containers.topology import describe_topology
    from hosttune.host.parsers import format_cpulist
    from hosttune.profile.sizes import format_size

    host = make_host(root)
    view = run_guarded(lambda: describe_topology(host.facts))
    if json_out:
        emit_json(view.to_json())
        return
    n_nodes = sum(len(p.nodes) for p in view.packages)
    n_l3 = sum(len(n.l3) for p in view.packages for n in p.nodes)
    console.print(f"[bold]{escape(view.cpu_model or 'unknown CPU')}[/]")
    console.print(f"{len(view.packages)} package(s) · {n_nodes} NUMA node(s) · {n_l3} L3 "
                  f"domain(s) · {view.cores} cores / {view.cpus} CPUs · {view.sibling_rule}",
                  soft_wrap=True)
    iso = set(view.isolated_cpus)
    for p in view.packages:
        console.print(f"package {p.id}")
        for n in p.nodes:
            console.print(f"  NUMA node {n.id}  {format_size(n.mem_total_bytes)}  CPUs "
                          f"{format_cpulist(n.cpus)}")
            for d in n.l3:
                label = f"L3 #{d.index}" if d.index >= 0 else "no L3 info"
                cores = " ".join(
                    "+".join(str(c) for c in core) + ("[yellow]*[/]" if set(core) & iso else "")
                    for core in d.cores)
                console.print(f"    {label:<8} CPUs {format_cpulist(d.cpus):<16} cores {cores}",
                              soft_wrap=True)
            for g in n.gpus:
                console.print(f"    GPU {escape(str(g))}")
    console.print("isolated CPUs: " + (format_cpulist(view.isolated_cpus) + " (marked *)"
                                       if iso else "none"))
    if view.gpus:
        for i, g in enumerate(view.gpus):
            node = g["numa_node"]
            where = f"node {node}" if node >= 0 else "no NUMA node reported"
            console.print(f"GPU {i}: {escape(g['address'])} ({escape(g['device'])}), {where}, "
                          f"local CPUs {escape(g['local_cpus'] or '?')}")
    else:
        console.print("GPUs: none (no NVIDIA device in /sys/bus/pci/devices)")
