"""The unshare backend's builder: a fresh process that makes one sandbox and becomes its holder.

genpi.sandbox runs its :func:`main` in ``python -I -S`` with ``PARENT UID DISK_MB ETC_MB SHM_MB SETPRIV INIT...``
and the seccomp program (:func:`genpi.seccomp.bpf`) on stdin, followed by the commands for the init. It
drops to ``UID`` (as root), makes new user, mount, PID, network, IPC, UTS and cgroup namespaces with
``unshare(2)``, and forks the sandbox's PID 1, which builds the root (:func:`_build_root`: ``mount(2)``, ``cp`` and
util-linux's ``pivot_root``, while the host's tree is still visible and nothing of the sandbox's has run), loads the
seccomp filter and executes the init through ``setpriv`` with no capability but ``CAP_SETPCAP``. Every module it
needs is imported before the uid changes (the new uid may not read the Python installation).
The builder then waits for its child and exits with it; both die with their parent (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import os
import sys

from genpi import seccomp
from genpi.sandbox_layout import ACTION_ENV, DEVICES, EMPTY_DIRS, PATH, TOP_DIRS

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x02000000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, SIGKILL = 1, 4, 9
# per-mount flags as /proc/self/mountinfo names them: a remount must repeat those the kernel locked
_MOUNT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": 1024, "nodiratime": 2048,
                "relatime": 1 << 21}

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0, data: str | None = None):
    encode = lambda text: None if text is None else text.encode()  # noqa: E731
    _check(_libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)), f"mount {target}")


def _ro_bind(source: str, target: str) -> None:
    """``source`` (a host path) on ``target`` with every mount under it, each read-only, nosuid and nodev."""
    _mount(source, target, None, MS_BIND | MS_REC)
    top = os.path.realpath(target)
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4:6] for line in f]  # parents come before their children
    for point, options in mounts:
        for escape, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
            point = point.replace(escape, char)  # how mountinfo writes them
        if point == top or point.startswith(top + "/"):
            flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
            for option in options.split(","):
                flags |= _MOUNT_FLAGS.get(option, 0)
            _mount(None, point, None, flags)


def _build_root(disk_mb: str, etc_mb: str, shm_mb: str) -> None:
    """Build the sandbox's root on a tmpfs mounted over /tmp (of this mount namespace only: nothing is created on
    the host), while the host's tree is still visible, and move into it."""
    _mount("genpi-sandbox", "/tmp", "tmpfs", 0, f"size={disk_mb}m,mode=0755")
    os.chdir("/tmp")
    for d in ("usr", "etc", "root", "proc", "dev", *EMPTY_DIRS):
        os.makedirs(d, exist_ok=True)
    os.chmod("root", 0o700)
    for d in ("tmp", "var/tmp"):
        os.chmod(d, 0o1777)
    for d in TOP_DIRS:
        if os.path.isdir(f"/{d}"):  # a symlink to a directory too: its target is bound
            os.mkdir(d)
            _ro_bind(f"/{d}", d)
    _ro_bind("/usr", "usr")
    _mount("genpi-etc", "etc", "tmpfs", 0, f"size={etc_mb}m,mode=0755")
    # a copy of what the sandbox's user can read (never /etc/shadow); cp skips the rest and says so on stderr
    _run("cp", "-RP", "--preserve=mode,links,timestamps", "/etc/.", "etc/", quiet=True)
    if os.path.lexists("etc/ld.so.preload"):
        os.unlink("etc/ld.so.preload")
    open("etc/ld.so.preload", "w").close()
    for name in ("etc/ld.so.preload", "etc/ld.so.cache"):
        if os.path.isfile(name) and not os.path.islink(name):
            _mount(name, name, None, MS_BIND)
            _mount(None, name, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    _mount("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount("genpi-dev", "dev", "tmpfs", MS_NOSUID, "size=1m,mode=0755")
    for name in DEVICES:
        open(f"dev/{name}", "w").close()
        _mount(f"/dev/{name}", f"dev/{name}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"dev/{name}")
    os.mkdir("dev/shm")
    _mount("genpi-shm", "dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, f"size={shm_mb}m,mode=1777")
    _mount(None, "dev", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
    os.mkdir(".genpi-old-root")
    if _run("pivot_root", ".", ".genpi-old-root") != 0:  # no C library wrapper: util-linux's tool makes the call
        raise OSError("pivot_root failed")
    os.chdir("/")
    _check(_libc.umount2(b"/.genpi-old-root", MNT_DETACH), "umount /.genpi-old-root")
    os.rmdir("/.genpi-old-root")


def _run(*args: str, quiet: bool = False) -> int:
    """Run a host tool (found on the sandbox's fixed PATH) and return its exit code; its stderr is ours unless
    ``quiet``. (posix_spawn rather than subprocess: this process starts faster without that import.)"""
    actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0)]
    if quiet:
        actions.append((os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0))
    pid = os.posix_spawnp(args[0], list(args), {"PATH": PATH, "LANG": "C"}, file_actions=actions)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the parent exits; exit now if it already has (``parent`` 0: it is outside our PID namespace)."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:
        os._exit(1)


def main(argv: list[str]) -> None:
    parent, uid, disk_mb, etc_mb, shm_mb, setpriv, *init = argv
    size = int.from_bytes(os.read(0, 4), "little")
    program = b""
    while len(program) < size:  # read exactly the program: what follows on stdin is the init's
        program += os.read(0, size - len(program))
    uid = int(uid)
    if uid >= 0:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        _check(_libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")  # else /proc/self stays root's
    _die_with_parent(int(parent))  # after the uid change, which clears the parent-death signal
    outer_uid, outer_gid = os.getuid(), os.getgid()
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
                         | CLONE_NEWCGROUP), "unshare")
    _die_with_parent(int(parent))
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {outer_uid} 1"), ("gid_map", f"0 {outer_gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    child = os.fork()
    if child:  # the holder: its child is the sandbox's PID 1
        _, status = os.waitpid(child, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    _die_with_parent(0)
    try:
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        _build_root(disk_mb, etc_mb, shm_mb)
    except OSError as e:
        sys.stderr.write(f"{e}\n")
        os._exit(1)
    _check(_libc.sethostname(b"sandbox", 7), "sethostname")
    seccomp.load(program)
    os.execve(setpriv, [setpriv, "--bounding-set=-all,+setpcap", "--inh-caps=-all", "--ambient-caps=-all", "--",
                        *init], ACTION_ENV)

