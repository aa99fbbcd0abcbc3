"""SELinux context options: is the host able to honour them, and how libfuse must get them.

Responsibility: decide, before forking, what happens to `context=`, `fscontext=`,
`defcontext=` and `rootcontext=`, and write them in libfuse's syntax.
  * The kernel's SELinux option parser splits the mount data at commas outside
    double quotes, so a label with MCS categories must reach mount(2) as
    `context="user:role:type:s0:c1,c2"` (option_values.selinux_context does that).
  * libfuse splits `-o` at commas and unescapes `\\,` before it copies kernel
    options into the mount data unchanged, so every comma (and backslash) of
    such an option is escaped for it (`libfuse_form`).
  * SELinux not enabled (mount(8) drops the options then): drop them with a
    one-line warning, or refuse with `strict_selinux`.
  * Where they cannot work, refuse before mounting: libfuse mounts through
    fusermount3 (which rejects them) without CAP_SYS_ADMIN and with auto_unmount.
Invariant: the checks that depend on the host are the two functions below, so
tests can replace them.
"""

from __future__ import annotations

import os

from .errors import MountError, UsageError
from .options import MountOptions

CONTEXT_OPTIONS = ("context", "fscontext", "defcontext", "rootcontext")
CAP_SYS_ADMIN = 21


def selinux_enabled() -> bool:
    """True when the running kernel has SELinux enabled.

    selinuxfs is registered only when SELinux is enabled at boot, so it shows in
    /proc/filesystems even in containers that do not mount /sys/fs/selinux.
    """
    if os.path.exists("/sys/fs/selinux/enforce"):
        return True
    try:
        with open("/proc/filesystems", encoding="ascii", errors="replace") as fh:
            return any(line.split()[-1:] == ["selinuxfs"] for line in fh)
    except OSError:
        return False


def can_mount_directly() -> bool:
    """True when libfuse's own mount(2) can succeed (CAP_SYS_ADMIN), so fusermount3 is not used."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def is_context_option(item: str) -> bool:
    return item.partition("=")[0] in CONTEXT_OPTIONS


def settle(opts: MountOptions) -> str | None:
    """Drop or refuse context options as the host requires; a warning line, or None.

    Raises UsageError (auto_unmount with contexts) or MountError (strict_selinux on a
    host without SELinux, or no privilege to pass contexts to the kernel).
    """
    contexts = [item for item in opts.kernel_options if is_context_option(item)]
    if not contexts:
        return None
    names = ", ".join(item.partition("=")[0] + "=" for item in contexts)
    if opts.auto_unmount:
        raise UsageError(f"{names} cannot be combined with auto_unmount: libfuse then mounts through "
                         "fusermount3, which refuses SELinux context options")
    if not selinux_enabled():
        if opts.strict_selinux:
            raise MountError(f"SELinux is not enabled on this host, so {names} cannot be applied "
                             "(strict_selinux is set; remove it to mount without the contexts)")
        opts.kernel_options = [item for item in opts.kernel_options if not is_context_option(item)]
        return (f"SELinux is not enabled on this host: ignoring {names} "
                "(add strict_selinux to fail instead)")
    if not can_mount_directly():
        raise MountError(f"{names} need a mount by root (CAP_SYS_ADMIN): as user {os.geteuid()} libfuse "
                         "mounts through fusermount3, which refuses SELinux context options")
    return None


def libfuse_form(item: str) -> str:
    """A kernel option as libfuse must receive it in `-o`: commas and backslashes escaped."""
    return item.replace("\\", "\\\\").replace(",", "\\,")
