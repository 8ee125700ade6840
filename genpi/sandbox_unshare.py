"""The unshare backend's builder: a fresh process that makes one sandbox and becomes its holder.

genpi.sandbox runs its :func:`main` in ``python -I -S`` with ``PARENT UID DISK_MB ETC_MB SHM_MB SETPRIV INIT...``
and the seccomp program (:func:`genpi.seccomp.bpf`) on stdin, followed by the commands for the init. It
drops to ``UID`` (as root), makes new user, mount, PID, network, IPC, UTS and cgroup namespaces with ``unshare(2)``, and
forks the sandbox's PID 1, which mounts the root with util-linux's tools (:data:`SETUP`, while the host's tree is
still visible and nothing of the sandbox's has run), loads the seccomp filter and executes the init through
``setpriv`` with no capability but ``CAP_SETPCAP``. Every module it needs is imported before the root changes.
The builder then waits for its child and exits with it; both die with their parent (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

from genpi import seccomp
from genpi.sandbox import ACTION_ENV, DEVICES, EMPTY_DIRS, PATH, TOP_DIRS

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x02000000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4

# Run as root of the new namespaces with the host's tree visible: build the root on a tmpfs mounted over /tmp (of
# this mount namespace only: nothing is created on the host) and move into it.
SETUP = r"""
set -eu
DISK=$1 ETC=$2 SHM=$3
mount -t tmpfs -o "size=${DISK}m,mode=0755" genpi-sandbox /tmp
cd /tmp
mkdir -p usr etc root proc dev %(dirs)s
chmod 0700 root; chmod 1777 tmp var/tmp
robind() {  # $1 (a host directory) on $2, with every mount under it, each read-only (keeping its locked flags)
  mount --rbind "$1" "$2"
  t=$(cd "$2" && pwd -P); mounts=$(cat /proc/self/mountinfo)
  printf '%%s\n' "$mounts" | while read -r _ _ _ _ m o _; do
    o=${o#rw}; o=${o#,}
    case "$m" in "$t"|"$t"/*) mount -o "remount,bind,ro,nosuid,nodev${o:+,$o}" "$m";; esac
  done
}
for d in %(top)s; do
  if [ -d "/$d" ]; then mkdir "$d"; robind "/$d" "$d"; fi
done
robind /usr usr
mount -t tmpfs -o "size=${ETC}m,mode=0755" genpi-etc etc
cp -RP --preserve=mode,links,timestamps /etc/. etc/ 2>/dev/null || true
rm -f etc/ld.so.preload; : > etc/ld.so.preload
for f in ld.so.preload ld.so.cache; do
  if [ -f "etc/$f" ]; then mount --bind "etc/$f" "etc/$f"; mount -o remount,bind,ro "etc/$f"; fi
done
mount -t proc -o nosuid,nodev,noexec proc proc
mount -t tmpfs -o size=1m,mode=0755 genpi-dev dev
for n in %(devices)s; do touch "dev/$n"; mount --bind "/dev/$n" "dev/$n"; done
ln -s /proc/self/fd dev/fd; ln -s /proc/self/fd/0 dev/stdin; ln -s /proc/self/fd/1 dev/stdout; ln -s /proc/self/fd/2 dev/stderr
mkdir dev/shm
mount -t tmpfs -o "size=${SHM}m,mode=1777,nosuid,nodev" genpi-shm dev/shm
mount -o remount,bind,ro,nosuid dev
mkdir .genpi-old-root
pivot_root . .genpi-old-root
cd /
umount -l /.genpi-old-root
rmdir /.genpi-old-root
""" % {"dirs": " ".join(EMPTY_DIRS), "top": " ".join(TOP_DIRS), "devices": " ".join(DEVICES)}

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the parent exits; exit now if it already has (``parent`` 0: it is outside our PID namespace)."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
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
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount(MS_PRIVATE)")
    done = subprocess.run(["/bin/sh", "-c", SETUP, "genpi-sandbox-setup", disk_mb, etc_mb, shm_mb],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env={"PATH": PATH, "LANG": "C"})
    if done.returncode != 0:
        sys.stderr.write(done.stderr.decode(errors="replace"))
        os._exit(1)
    os.chdir("/")
    _check(_libc.sethostname(b"sandbox", 7), "sethostname")
    seccomp.load(program)
    os.execve(setpriv, [setpriv, "--bounding-set=-all,+setpcap", "--inh-caps=-all", "--ambient-caps=-all", "--",
                        *init], ACTION_ENV)

