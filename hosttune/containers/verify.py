"""Check running containers against the plan: the Docker Engine API finds them (labels, PID,
configuration), the kernel says what is true (cgroup cpuset and memory limit,
/proc/<pid>/{status,limits,mountinfo}).

Configured values can lie (a container created by hand, `docker update`, a daemon default); the
kernel's do not, so every check reads the live value and names the configured one only when
the kernel's cannot be read."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import field

from hosttune.containers.compose import LABEL_PROJECT, LABEL_WORKER
from hosttune.containers.cpusets import check_cpusets
from hosttune.containers.planner import ContainerPlan, WorkerPlan
from hosttune.errors import HosttuneError
from hosttune.host.facts import HostFacts, find_pids
from hosttune.host.parsers import (
    Mount,
    format_cpulist,
    parse_cpulist,
    parse_limits,
    parse_mountinfo,
)
from hosttune.profile.sizes import format_size

if TYPE_CHECKING:
    from hosttune.host.core import Host

CAP_IPC_LOCK = 14
CAP_SYS_RESOURCE = 24
# include/uapi/linux/capability.h
CAP_NAMES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)
# cgroup v1 memory.limit_in_bytes when unlimited: LONG_MAX rounded down to the page size
_V1_UNLIMITED = 2**62


def cap_names(mask: int) -> list[str]:
    return [CAP_NAMES[i] if i < len(CAP_NAMES) else f"CAP_{i}" for i in range(64)
            if mask >> i & 1]


class Check(msgspec.Struct, frozen=True):
    subject: str  # container name, or 'dockerd' / 'containerd'
    check: str
    expected: str
    actual: str
    ok: bool
    note: str = ""

    def line(self) -> str:
        s = f"{self.subject}: {self.check} is {self.actual}, plan says {self.expected}"
        return s + (f" ({self.note})" if self.note else "")

    def to_json(self) -> dict[str, Any]:
        return {"subject": self.subject, "check": self.check, "expected": self.expected,
                "actual": self.actual, "ok": self.ok, "note": self.note}


class VerifyReport(msgspec.Struct, frozen=True):
    checks: tuple[Check, ...]

    @property
    def mismatches(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_json(self) -> dict[str, Any]:
        return {"ok": not self.mismatches, "mismatches": [c.line() for c in self.mismatches],
                "checks": [c.to_json() for c in self.checks]}


class LiveContainer(msgspec.Struct, frozen=True):
    """What one container is, as the Engine API and the kernel report it."""

    id: str
    name: str
    labels: dict[str, str]
    status: str  # running, exited, restarting ...
    exit_code: int
    pid: int
    cpuset_configured: str
    env: dict[str, str]
    device_ids: tuple[str, ...]
    cpus: tuple[int, ...] | None = None  # live cpuset (cgroup, else Cpus_allowed_list)
    mems: tuple[int, ...] | None = None
    memory_limit: int | None = None  # bytes; None = unlimited
    memory_known: bool = False
    memlock: tuple[int | None, int | None] | None = None  # (soft, hard), None = unlimited
    vmlck_bytes: int | None = None
    cap_eff: int | None = None
    cap_bnd: int | None = None
    no_new_privs: bool | None = None
    mounts: tuple[Mount, ...] = ()
    visible: dict[str, bool] = field(default_factory=dict)  # path in container -> exists
    error: str = ""  # State.Error: why it did not start (e.g. 'error setting rlimit type 8')

    @property
    def running(self) -> bool:
        return self.status == "running" and self.pid > 0


def _cgroups(text: str) -> dict[str, str]:
    """/proc/<pid>/cgroup -> {controller: path}; the v2 hierarchy is under ''."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for ctl in parts[1].split(",") if parts[1] else [""]:
            out[ctl] = parts[2]
    return out


def _status(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            out[k.strip()] = v.strip()
    return out


def read_live(host: Host, attrs: dict[str, Any], probe_paths: tuple[str, ...] = ()
              ) -> LiveContainer:
    """A container's live state from its inspect data and the kernel files of its PID."""
    state = attrs.get("State") or {}
    cfg = attrs.get("Config") or {}
    hc = attrs.get("HostConfig") or {}
    env = dict(e.split("=", 1) if "=" in e else (e, "") for e in cfg.get("Env") or [])
    dev_ids: list[str] = []
    for req in hc.get("DeviceRequests") or []:
        dev_ids.extend(req.get("DeviceIDs") or [])
    pid = int(state.get("Pid") or 0)
    base = dict(
        id=str(attrs.get("Id", ""))[:12], name=str(attrs.get("Name", "")).lstrip("/"),
        labels=dict(cfg.get("Labels") or {}), status=str(state.get("Status", "")),
        exit_code=int(state.get("ExitCode") or 0), pid=pid,
        cpuset_configured=str(hc.get("CpusetCpus") or ""), env=env,
        device_ids=tuple(dev_ids), error=str(state.get("Error") or ""))
    if not (base["status"] == "running" and pid > 0):
        return LiveContainer(**base)  # type: ignore[arg-type]
    st = _status(host.read_text(f"/proc/{pid}/status") or "")
    cg = _cgroups(host.read_text(f"/proc/{pid}/cgroup") or "")

    def cg_value(v1_ctl: str, v1_files: tuple[str, ...], v2_file: str) -> str | None:
        if v1_ctl in cg:
            for f in v1_files:
                v = host.read_value(f"/sys/fs/cgroup/{v1_ctl}{cg[v1_ctl]}/{f}")
                if v is not None:
                    return v
        if "" in cg:
            return host.read_value(f"/sys/fs/cgroup{cg['']}/{v2_file}")
        return None

    cpus_text = cg_value("cpuset", ("cpuset.effective_cpus", "cpuset.cpus"),
                         "cpuset.cpus.effective") or st.get("Cpus_allowed_list")
    mems_text = cg_value("cpuset", ("cpuset.effective_mems", "cpuset.mems"),
                         "cpuset.mems.effective") or st.get("Mems_allowed_list")
    mem_text = cg_value("memory", ("memory.limit_in_bytes",), "memory.max")
    mem_limit: int | None = None
    mem_known = mem_text is not None
    if mem_text is not None and mem_text != "max":
        try:
            mem_limit = int(mem_text)
        except ValueError:
            mem_known = False
        if mem_limit is not None and mem_limit >= _V1_UNLIMITED:
            mem_limit = None
    lim = parse_limits(host.read_text(f"/proc/{pid}/limits") or "")
    vmlck = None
    if "VmLck" in st:
        vmlck = int(st["VmLck"].split()[0]) * 1024

    def hexint(key: str) -> int | None:
        try:
            return int(st[key], 16)
        except (KeyError, ValueError):
            return None

    mounts = tuple(parse_mountinfo(host.read_text(f"/proc/{pid}/mountinfo") or ""))
    visible = {p: host.exists(f"/proc/{pid}/root/{p.lstrip('/')}") for p in probe_paths}
    return LiveContainer(
        **base,  # type: ignore[arg-type]
        cpus=tuple(parse_cpulist(cpus_text)) if cpus_text else None,
        mems=tuple(parse_cpulist(mems_text)) if mems_text else None,
        memory_limit=mem_limit, memory_known=mem_known,
        memlock=lim.get("Max locked memory"), vmlck_bytes=vmlck,
        cap_eff=hexint("CapEff"), cap_bnd=hexint("CapBnd"),
        no_new_privs=(st["NoNewPrivs"] == "1") if "NoNewPrivs" in st else None,
        mounts=mounts, visible=visible)


def _lim(v: int | None) -> str:
    return "unlimited" if v is None else format_size(v)


def _mount_at(live: LiveContainer, target: str) -> Mount | None:
    found = None
    for m in live.mounts:  # the last mount on a path is the visible one
        if m.mount_point == target:
            found = m
    return found


def compare(plan: ContainerPlan, w: WorkerPlan, live: LiveContainer) -> list[Check]:
    """Pure: the checks of one planned worker against its live container."""
    checks = _Checks(live.name or w.container)
    if not live.running:
        checks.add("state", "running", f"{live.status} (exit code {live.exit_code})", False,
                   live.error)
        return checks.out
    _check_cgroup(checks, w, live)
    _check_privileges(checks, plan, live)
    _check_memlock(checks, plan, live)
    _check_mounts(checks, plan, w, live)
    _check_preload(checks, plan, w, live)
    threads = live.env.get("LLAMA_ARG_THREADS", "unset")
    checks.add("llama.cpp threads", str(w.threads), threads, threads == str(w.threads))
    if w.gpus or live.device_ids:
        exp_g = ",".join(str(g) for g in w.gpus) or "none"
        act_g = ",".join(live.device_ids) or "none"
        checks.add("GPU devices", exp_g, act_g, exp_g == act_g)
    return checks.out


class _Checks(msgspec.Struct):
    """The checks of one container, in the order they are reported."""
    name: str
    out: list[Check] = field(default_factory=list)

    def add(self, check: str, expected: str, actual: str, ok: bool, note: str = "") -> None:
        self.out.append(Check(self.name, check, expected, actual, ok, note))


def _check_cgroup(checks: _Checks, w: WorkerPlan, live: LiveContainer) -> None:
    """cpuset.cpus, cpuset.mems and the memory limit, as the cgroup has them."""
    exp_cpus = format_cpulist(w.cpus)
    act = "unknown" if live.cpus is None else format_cpulist(live.cpus)
    note = "" if live.cpuset_configured else "started without a cpuset"
    checks.add("cpuset.cpus", exp_cpus, act, live.cpus == w.cpus,
               note if act != exp_cpus else "")
    exp_mems = format_cpulist(w.mems)
    act_mems = "unknown" if live.mems is None else format_cpulist(live.mems)
    checks.add("cpuset.mems", exp_mems, act_mems, live.mems == w.mems,
               "" if act_mems == exp_mems else f"docker update --cpuset-mems {exp_mems} "
               f"{checks.name}")
    checks.add("memory limit", format_size(w.memory_bytes),
               _lim(live.memory_limit) if live.memory_known else "unknown",
               live.memory_known and live.memory_limit == w.memory_bytes)


def _check_privileges(checks: _Checks, plan: ContainerPlan, live: LiveContainer) -> None:
    """Capabilities: IPC_LOCK only in ipc_lock mode, nothing otherwise; no-new-privileges."""
    want_caps = {"IPC_LOCK"} if plan.memlock_mode == "ipc_lock" else set()
    for key, mask in (("capabilities (effective)", live.cap_eff),
                      ("capabilities (bounding)", live.cap_bnd)):
        have = set(cap_names(mask)) if mask is not None else None
        checks.add(key, ",".join(sorted(want_caps)) or "none",
                   "unknown" if have is None else (",".join(sorted(have)) or "none"),
                   have == want_caps)
    checks.add("no-new-privileges", "1", "unknown" if live.no_new_privs is None else
               str(int(live.no_new_privs)), live.no_new_privs is True)


def _check_memlock(checks: _Checks, plan: ContainerPlan, live: LiveContainer) -> None:
    """RLIMIT_MEMLOCK as planned (ulimit mode), and VmLck within it."""
    if live.memlock is None:
        checks.add("memlock", "readable", "unknown", False)
    else:
        soft, hard = live.memlock
        actual = f"{_lim(soft)}/{_lim(hard)}"
        if plan.memlock_mode == "ulimit":
            exp = f"{_lim(plan.memlock_bytes)}/{_lim(plan.memlock_bytes)}"
            checks.add("memlock soft/hard", exp, actual,
                       soft == plan.memlock_bytes and hard == plan.memlock_bytes)
        else:
            checks.add("memlock soft/hard", "any (IPC_LOCK)", actual, True)
    if live.vmlck_bytes is not None:
        limit = live.memlock[0] if live.memlock else None
        over = (plan.memlock_mode == "ulimit" and limit is not None
                and live.vmlck_bytes > limit)
        checks.add("VmLck", f"<= {_lim(limit)}" if plan.memlock_mode == "ulimit" else "any",
                   format_size(live.vmlck_bytes), not over,
                   "hugetlb mappings never count in VmLck (mm/mlock.c skips hugetlb VMAs)")


def _check_mounts(checks: _Checks, plan: ContainerPlan, w: WorkerPlan, live: LiveContainer
                  ) -> None:
    """A read-only rootfs; the store read-only on hugetlbfs, with the model visible in it."""
    root = _mount_at(live, "/")
    checks.add("rootfs", "read-only", "unknown" if root is None else
               ("read-only" if "ro" in root.options else "writable"),
               root is not None and "ro" in root.options)
    if not (w.model_path and plan.store):
        return
    m = _mount_at(live, plan.store_target)
    if m is None:
        checks.add(f"mount {plan.store_target}", "hugetlbfs read-only", "absent", False)
    else:
        ro = "ro" in m.options
        checks.add(f"mount {plan.store_target}", "hugetlbfs read-only",
                   f"{m.fstype} {'read-only' if ro else 'writable'}",
                   m.fstype == "hugetlbfs" and ro)
    checks.add("MODEL_PATH", w.model_path, live.env.get("MODEL_PATH", "unset"),
               live.env.get("MODEL_PATH") == w.model_path)
    seen = live.visible.get(w.model_path)
    if seen is not None:
        checks.add("model file", "visible", "visible" if seen else "missing", seen,
                   "" if seen else "not in the store (hosttune models load?)")


def _check_preload(checks: _Checks, plan: ContainerPlan, w: WorkerPlan, live: LiveContainer
                   ) -> None:
    """LD_PRELOAD of the shim exactly where planned, and the shim mounted read-only."""
    want_preload = plan.shim_target if w.shim else None
    have_preload = live.env.get("LD_PRELOAD") or None
    if want_preload or have_preload:
        checks.add("LD_PRELOAD", want_preload or "unset", have_preload or "unset",
                   want_preload == have_preload)
    if want_preload:
        sm = _mount_at(live, want_preload)
        checks.add(f"mount {want_preload}", "read-only", "absent" if sm is None else
                   ("read-only" if "ro" in sm.options else "writable"),
                   sm is not None and "ro" in sm.options)


def check_daemons(host: Host, plan: ContainerPlan) -> list[Check]:
    """dockerd's and containerd's own memlock. runc (under containerd) sets a container's
    RLIMIT_MEMLOCK; above the runtime's hard limit that needs CAP_SYS_RESOURCE, otherwise the
    container fails at start: 'error setting rlimit type 8: operation not permitted'."""
    out: list[Check] = []
    for comm in ("dockerd", "containerd"):
        pids = find_pids(host, comm)
        if not pids:
            out.append(Check(comm, "memlock soft/hard", "readable", "not found", True,
                             "no such process here (remote or rootless daemon?)"))
            continue
        pid = pids[0]
        lim = parse_limits(host.read_text(f"/proc/{pid}/limits") or "").get(
            "Max locked memory")
        st = _status(host.read_text(f"/proc/{pid}/status") or "")
        try:
            can_raise = bool(int(st.get("CapEff", "0"), 16) >> CAP_SYS_RESOURCE & 1)
        except ValueError:
            can_raise = False
        if lim is None:
            out.append(Check(comm, "memlock soft/hard", "readable", "unknown", False))
            continue
        soft, hard = lim
        actual = f"{_lim(soft)}/{_lim(hard)}" + ("" if can_raise else
                                                 ", no CAP_SYS_RESOURCE")
        if plan.memlock_mode == "ipc_lock":
            out.append(Check(comm, "memlock soft/hard", "any (workers use IPC_LOCK)", actual,
                             True))
            continue
        want = plan.memlock_bytes
        fits = hard is None or (want is not None and want <= hard)
        ok = fits or can_raise
        note = "" if ok else ("containers asking for more fail at start (error setting rlimit "
                              "type 8): apply the memlock section (LimitMEMLOCK drop-in) and "
                              "restart the daemon, or use workload.memlock: ipc_lock")
        out.append(Check(comm, "memlock hard", f">= {_lim(want)}", actual, ok, note))
    return out


def check_workers(facts: HostFacts, live_cpus: dict[str, tuple[int, ...]]) -> list[Check]:
    """The planned workers' live cpusets against each other on this topology: no CPU and no
    physical core (through its SMT siblings) in two workers. Comparing each worker with its
    plan does not show this: a plan made on other facts, hand-made ``cpusets`` or a CPU
    numbering mistake (cores N and N+16 taken for different cores on a CPU whose SMT
    siblings are numbered N and N+16) would match itself and still share cores."""
    findings = []
    pairs: set[tuple[str, ...]] = set()
    for f in check_cpusets(facts, live_cpus):  # per pair, an overlap before its siblings
        if f.kind in ("overlap", "sibling-sharing") and f.names not in pairs:
            pairs.add(f.names)
            findings.append(f)
    if not findings:
        return [Check("workers", "shared CPUs or SMT cores", "none", "none",
                      True)] if len(live_cpus) > 1 else []
    return [Check(f.names[0], "shared CPUs" if f.kind == "overlap" else "shared SMT cores",
                  f"none with {f.names[1]}", format_cpulist(f.cpus), False, f.message)
            for f in findings]


def check_others(facts: HostFacts, plan: ContainerPlan, others: list[LiveContainer]
                 ) -> list[Check]:
    """Containers outside the plan that run on a worker's CPUs or its SMT siblings."""
    out: list[Check] = []
    workers = {w.container: w.cpus for w in plan.workers}
    for o in others:
        if not o.running:
            continue
        cpus = o.cpus if o.cpus is not None else tuple(facts.cpu_ids)
        reported: set[str] = set()
        # overlap findings come before sibling-sharing ones: one line per worker touched
        for f in check_cpusets(facts, {**workers, o.name: cpus}):
            if o.name not in f.names or f.kind not in ("overlap", "sibling-sharing"):
                continue
            other = next(n for n in f.names if n != o.name)
            if other in reported:
                continue
            reported.add(other)
            how = ("shares CPUs" if f.kind == "overlap" else "shares SMT siblings of")
            out.append(Check(
                o.name, "cpuset.cpus", f"no CPU of {other}", format_cpulist(cpus), False,
                f"not in the plan; {how} {format_cpulist(f.cpus)}"
                + ("" if o.cpuset_configured else "; started without a cpuset")))
    return out


def docker_client(url: str | None = None) -> Any:
    """A Docker SDK client (Engine API), or HosttuneError saying why not."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise HosttuneError("the 'docker' Python package is not installed") from err
    try:
        client = (docker.DockerClient(base_url=url, version="auto", timeout=30) if url
                  else docker.from_env(version="auto", timeout=30))
        client.ping()
    except DockerException as err:
        where = url or "DOCKER_HOST or /var/run/docker.sock"
        raise HosttuneError(f"cannot reach the Docker Engine ({where}): {err}") from err
    return client


def verify(host: Host, plan: ContainerPlan, client: Any) -> VerifyReport:
    """Every planned worker's container against the plan, the daemons' memlock, and other
    containers that run on the workers' cores."""
    from docker.errors import DockerException

    if not plan.ok:
        raise HosttuneError("the plan was refused: " + "; ".join(plan.refusals))
    try:
        mine = client.containers.list(all=True, filters={
            "label": f"{LABEL_PROJECT}={plan.project}"})
        running = client.containers.list()
    except DockerException as err:
        raise HosttuneError(f"Docker Engine API: {err}") from err
    probes = tuple(w.model_path for w in plan.workers if w.model_path)
    by_worker: dict[str, list[LiveContainer]] = {}
    seen: set[str] = set()
    checks: list[Check] = []
    for c in mine:
        live = read_live(host, c.attrs, probes)
        seen.add(live.id)
        by_worker.setdefault(live.labels.get(LABEL_WORKER, ""), []).append(live)
    live_cpus: dict[str, tuple[int, ...]] = {}
    for w in plan.workers:
        lives = by_worker.pop(w.name, [])
        if not lives:
            checks.append(Check(w.container, "state", "running", "no container", False,
                                f"labels {LABEL_PROJECT}={plan.project}, "
                                f"{LABEL_WORKER}={w.name}"))
            continue
        run = [x for x in lives if x.running] or lives
        if len([x for x in lives if x.running]) > 1:
            checks.append(Check(w.container, "containers", "1",
                                str(len([x for x in lives if x.running])), False,
                                "several running containers for one worker"))
        for live in run:
            checks.extend(compare(plan, w, live))
            if live.running and live.cpus is not None:
                live_cpus[live.name or w.container] = live.cpus
    checks.extend(check_workers(host.facts, live_cpus))
    for stale, lives in by_worker.items():
        for live in lives:
            if live.running:
                checks.append(Check(live.name, "worker", "a planned worker",
                                    stale or "unlabelled", False,
                                    f"project {plan.project} has no worker {stale!r}"))
    checks.extend(check_daemons(host, plan))
    others = [read_live(host, c.attrs) for c in running if c.attrs.get("Id", "")[:12]
              not in seen]
    checks.extend(check_others(host.facts, plan, others))
    return VerifyReport(tuple(checks))
