"""Container cpusets in the host's compose files: overlaps, SMT siblings shared between
workers, unknown or reserved CPUs, sets spanning L3 or NUMA domains, unpinned workers.

The rules come from containers.cpusets (check_compose, the planner's own checks): the doctor
only finds the compose files and asks those rules."""

from __future__ import annotations

from collections.abc import Iterator

from hosttune.containers.cpusets import check_compose
from hosttune.doctor.base import DoctorContext, Finding, Severity
from hosttune.doctor.composefiles import compose_doc, compose_files, label_to_service, service_line
from hosttune.errors import HosttuneError

CPUSET_CHECKS = {"overlap": "containers.cpuset-overlap",
                 "sibling-sharing": "containers.cpuset-smt-sharing",
                 "unknown-cpu": "containers.cpuset-unknown-cpu",
                 "reserved": "containers.cpuset-reserved",
                 "spans-l3": "containers.cpuset-spans-l3",
                 "spans-numa": "containers.cpuset-spans-numa",
                 "unpinned": "containers.unpinned"}


def check_container_cpusets(ctx: DoctorContext) -> Iterator[Finding]:
    facts = ctx.host.facts
    for path in compose_files(ctx):
        got = compose_doc(ctx, path)
        if got is None:
            continue
        text, services = got
        try:
            found = check_compose(facts, text, source=path)
        except HosttuneError as err:
            yield Finding("containers.compose-unreadable", Severity.WARNING,
                          "compose file cannot be checked", path, str(err),
                          "fix the file; profile key workload (hosttune containers compose)")
            continue
        labels = label_to_service(services)
        for cf in found:
            svc = labels.get(cf.names[0], cf.names[0])
            line = service_line(text, svc, "cpuset")
            yield Finding(
                CPUSET_CHECKS[cf.kind],
                Severity.ERROR if cf.severity == "error" else Severity.WARNING,
                f"{' / '.join(cf.names)}: {cf.kind.replace('-', ' ')}", f"{path}:{line}",
                cf.message + ".",
                "profile key workload (hosttune containers plan gives each worker whole "
                "cores inside one L3 domain: `hosttune containers compose`)")
