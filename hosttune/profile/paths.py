"""Path rules of the profile (the schema and the cuda_env family share them)."""

from __future__ import annotations

# Directories a mount point or a cache directory must never be: mounting hugetlbfs over them
# hides the system, a chmod/chgrp there opens it up.
SYSTEM_DIRS = frozenset({
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32",
    "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr",
    "/var", "/var/cache", "/var/lib", "/var/log", "/var/tmp", "/var/run", "/run/user",
})
SYSTEM_TREES = ("/etc/", "/usr/", "/boot/", "/proc/", "/sys/", "/bin/", "/sbin/", "/lib/",
                "/lib64/", "/lib32/", "/root/")


def system_dir_problem(v: str) -> str | None:
    """Why ``v`` (normalised) is a system directory, or None."""
    if v in SYSTEM_DIRS or v.startswith(SYSTEM_TREES):
        return f"{v} is a system directory"
    return None
