"""The seccomp filter every sandbox process runs under: the system calls that change namespaces, mounts, other
processes' memory or the kernel itself fail with ``EPERM``; everything else is allowed.

The filter is compiled once per process by libseccomp (through the ``pyseccomp`` binding) into the BPF program
:func:`bpf` returns; bubblewrap loads it (``bwrap --seccomp FD``), and the unshare backend's builder loads the same
bytes with :func:`load` just before it executes the sandbox's init. System calls of another architecture (32-bit
calls from a 64-bit process) kill the caller, libseccomp's default for a filter that lists only the native one.
"""

from __future__ import annotations

import ctypes
import errno
import os
from functools import cache

from genpi.errors import UserError

DENIED = (
    # mounts and namespaces: the sandbox's file system and isolation stay as they were built
    "mount", "umount2", "pivot_root", "chroot", "setns", "unshare", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr",
    # other processes and their memory
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # the kernel: modules, kexec, BPF, perf, keyrings, swap, clock, reboot, accounting, quotas, handles
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "bpf", "perf_event_open",
    "keyctl", "add_key", "request_key", "swapon", "swapoff", "reboot", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "acct", "quotactl", "quotactl_fd", "open_by_handle_at", "name_to_handle_at",
    "lookup_dcookie", "syslog", "iopl", "ioperm", "uselib", "userfaultfd", "vhangup",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "fanotify_init",
    # memory the tmpfs sizes and rlimits would not count: SysV IPC, POSIX message queues, memfds
    "shmget", "shmat", "shmctl", "shmdt", "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semctl",
    "semtimedop", "mq_open", "memfd_create", "memfd_secret",
)
# clone(2) flags that make a new namespace: clone with any of them fails as unshare(2) does
_CLONE_NEW = {"CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
              "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
              "CLONE_NEWNET": 0x40000000}


def _pyseccomp():
    try:
        import pyseccomp
    except (ImportError, RuntimeError) as e:  # pyseccomp raises RuntimeError when libseccomp.so is missing
        raise UserError(f"cannot build the sandbox's seccomp filter ({e}): install libseccomp "
                        "(apt-get install libseccomp2) and pyseccomp (pip install pyseccomp)") from e
    return pyseccomp


def build():
    """The filter as a ``pyseccomp.SyscallFilter`` (not yet loaded)."""
    sc = _pyseccomp()
    f = sc.SyscallFilter(sc.ALLOW)
    for name in DENIED:
        if sc.resolve_syscall(sc.Arch.NATIVE, name) >= 0:  # a call this kernel's architecture does not have is absent
            f.add_rule(sc.ERRNO(errno.EPERM), name)
    for flag in _CLONE_NEW.values():
        f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # clone3 passes its flags in memory a filter cannot read: ENOSYS makes the C library fall back to clone
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    return f


@cache
def bpf() -> bytes:
    """The compiled filter, as ``bwrap --seccomp`` reads it (an array of ``struct sock_filter``)."""
    read, write = os.pipe()
    with os.fdopen(read, "rb") as r:
        with os.fdopen(write, "wb") as w:
            build().export_bpf(w)  # a few hundred bytes: the pipe holds them
        return r.read()


class _SockFprog(ctypes.Structure):  # struct sock_fprog: the program's length in instructions, and the instructions
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2


def load(program: bytes) -> None:
    """Load ``program`` (what :func:`bpf` returned) into this process, after setting no_new_privs (the kernel's
    condition for an unprivileged filter); everything the process executes from now on runs under it."""
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))  # 8 bytes per struct sock_filter
    for args in ((PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), (PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0)):
        if libc.prctl(*args) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl({args[0]}): {os.strerror(err)}")
