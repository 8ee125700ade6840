"""A throwaway Linux environment for model-written shell commands: one per dialogue or task, never the host.

A :class:`Sandbox` is a *holder* process in its own user, mount, PID, network, IPC and UTS namespaces. Its root
is a size-limited tmpfs that holds a copy of the host's readable ``/etc`` and empty ``/root``, ``/home``,
``/tmp``, ``/var``...; the host's ``/usr`` (and ``/bin``, ``/lib``... where they are directories) is bind-mounted
read-only, so the host's tools run but cannot be changed. Each :meth:`Sandbox.run` enters the holder's
namespaces and runs one ``bash -c`` in a fresh PID namespace of its own, with a clean environment and resource
limits; when it ends, or is killed at its time or output limit, every process it started dies with it. Files
persist between the actions of one sandbox (a dialogue's earlier commands are seen by its later ones) and
vanish with the holder: the host's files never change.

Backends: bubblewrap (``bwrap``) builds the holder where it is installed; otherwise ``unshare`` (util-linux)
does, with the same mounts made by a setup script. Either way the actions enter through ``nsenter``. When the
process runs as root it first drops to an unprivileged host uid (``SANDBOX_UID``), so the sandbox's root is root
only inside its namespaces: host files owned by root read as "nobody" and its process limits apply. When
neither backend can build a holder, :func:`check_available` raises a one-line :class:`SandboxUnavailable` that
says what to install; nothing ever runs unsandboxed. What this does and does not protect against: docs/SANDBOX.md.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from genpi.errors import UserError

SANDBOX_UID = 2_000_000_000  # the host uid a root caller drops to: no file or process on the host has it
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_TOP_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")  # mirrored from the host: symlinks or read-only
_DEVICES = ("null", "zero", "full", "random", "urandom")


class SandboxUnavailable(UserError):
    """Neither bubblewrap nor unshare can isolate a command on this machine."""


class SandboxError(RuntimeError):
    """A sandbox that was available could not be started (its setup's own error is in the message)."""


@dataclass(frozen=True)
class Limits:
    """What one action may use. The wall-clock limit is enforced from outside; the others by the kernel."""

    seconds: float = 10.0  # wall clock per action: then every process of the action is killed
    memory_mb: int = 512  # address space per process (RLIMIT_AS)
    processes: int = 64  # processes of the sandbox's user at once (RLIMIT_NPROC): a fork bomb stops here
    output_bytes: int = 65_536  # stdout and stderr kept per action: the action is killed when it writes more
    disk_mb: int = 128  # size of the writable root (tmpfs), shared by every action of the sandbox
    open_files: int = 256  # file descriptors per process (RLIMIT_NOFILE)


@dataclass
class Action:
    """What one command did: its output (stdout and stderr interleaved, as a terminal shows them) and how it ended."""

    command: str
    output: str
    exit_code: int | None  # None when the action was killed
    seconds: float
    timed_out: bool = False
    truncated: bool = False  # the output limit was reached: the action was killed there

    @property
    def note(self) -> str:
        """Why the action was cut short ("" when it was not)."""
        if self.timed_out:
            return "[killed: still running after the time limit]"
        return "[killed: output limit reached]" if self.truncated else ""

    def text(self) -> str:
        """The output as the agent is shown it, with the note when the action was cut short."""
        if not self.note:
            return self.output
        return self.output + ("\n" if self.output and not self.output.endswith("\n") else "") + self.note


def _setpriv() -> list[str]:
    """The prefix of every sandbox tool's command: it dies with the thread that started it (so a killed genpi leaves
    no sandbox or command running), and, as root, it runs as ``SANDBOX_UID`` (its user namespace then maps root to
    that uid)."""
    args = ["setpriv", "--pdeathsig", "KILL"]
    if os.geteuid() == 0:
        args += [f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups"]
    return args


# The unshare backend's holder: run as root of the new namespaces, with the host's root still visible, it mounts
# the sandbox's root on $1, moves into it and drops the host's tree, prints "ready", and waits.
_UNSHARE_SETUP = r"""
set -eu
R=$1; DISK=$2
mount -t tmpfs -o "size=${DISK}m,mode=0755" genpi-sandbox "$R"
cd "$R"
mkdir -p usr etc home root tmp var/tmp opt srv mnt run proc dev
chmod 1777 tmp var/tmp
chmod 0700 root
for d in %(top)s; do
  if [ -L "/$d" ]; then ln -s "$(readlink "/$d")" "$d"
  elif [ -d "/$d" ]; then mkdir "$d"; mount --bind "/$d" "$d"; mount -o remount,bind,ro,nosuid,nodev "$d"; fi
done
mount --bind /usr usr
mount -o remount,bind,ro,nosuid,nodev usr
cp -RP --preserve=mode,links,timestamps /etc/. etc/ 2>/dev/null || true
mount -t proc -o nosuid,nodev,noexec proc proc
mount -t tmpfs -o size=1m,mode=0755 dev dev
for n in %(devices)s; do touch "dev/$n"; mount --bind "/dev/$n" "dev/$n"; done
ln -s /proc/self/fd dev/fd; ln -s /proc/self/fd/0 dev/stdin; ln -s /proc/self/fd/1 dev/stdout; ln -s /proc/self/fd/2 dev/stderr
mkdir dev/shm
mkdir .genpi-old-root
pivot_root . .genpi-old-root
cd /
umount -l /.genpi-old-root
rmdir /.genpi-old-root
hostname sandbox
echo ready
exec sleep infinity
""" % {"top": " ".join(_TOP_DIRS), "devices": " ".join(_DEVICES)}


def _unshare_holder(mountpoint: str, limits: Limits) -> list[str]:
    return [*_setpriv(), "unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "--kill-child",
            "--net", "--ipc", "--uts", "--propagation", "private",
            "/bin/sh", "-c", _UNSHARE_SETUP, "genpi-sandbox", mountpoint, str(limits.disk_mb)]


_HOST_ETC = "/.genpi-host-etc"  # where bwrap shows the host's /etc until the holder's setup has copied it

def _bwrap_holder(limits: Limits, info_fd: int) -> list[str]:
    args = [*_setpriv(), "bwrap", "--unshare-user", "--uid", "0", "--gid", "0", "--unshare-pid",
            "--unshare-net", "--unshare-ipc", "--unshare-uts", "--hostname", "sandbox", "--die-with-parent",
            "--new-session", "--info-fd", str(info_fd),
            "--size", str(limits.disk_mb * 1024 * 1024), "--perms", "0755", "--tmpfs", "/",
            "--ro-bind", "/usr", "/usr"]
    for d in _TOP_DIRS:
        host = Path("/") / d
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), f"/{d}"]
        elif host.is_dir():
            args += ["--ro-bind", str(host), f"/{d}"]
    args += ["--ro-bind", "/etc", _HOST_ETC, "--dir", "/etc", "--proc", "/proc", "--dev", "/dev", "--dir", "/home", "--perms", "0700",
             "--dir", "/root", "--perms", "1777", "--dir", "/tmp", "--perms", "1777", "--dir", "/var/tmp",
             "--dir", "/opt", "--dir", "/srv", "--dir", "/mnt", "--dir", "/run",
             "/bin/sh", "-c", "echo ready; exec sleep infinity"]
    return args


@cache
def backends() -> tuple[str, ...]:
    """The backends installed here, preferred first (whether they can isolate is up to the kernel: see
    :func:`check_available`)."""
    return tuple(b for b, tool in (("bwrap", "bwrap"), ("unshare", "unshare")) if shutil.which(tool))


_checked: dict[str, str] = {}  # backend -> "" when it started a sandbox here, else the reason it could not


def check_available(backend: str = "auto") -> str:
    """The backend to use (``auto``: bubblewrap where it works, else unshare), after starting one sandbox with it;
    a one-line :class:`SandboxUnavailable` when nothing here can isolate a command."""
    if backend not in ("auto", "bwrap", "unshare"):
        raise UserError(f"unknown sandbox backend {backend!r}: choose auto, bwrap or unshare")
    candidates = backends() if backend == "auto" else (backend,)
    reasons = []
    for b in candidates:
        if b not in _checked:
            if not shutil.which(b):
                _checked[b] = f"{b} is not installed"
            else:
                try:
                    box = Sandbox.__new__(Sandbox)  # unchecked: this is the check
                    box._init(Limits(), b)
                    with box:
                        action = box.run("echo ok")
                    _checked[b] = "" if action.output.strip() == "ok" else f"{b}: a test command printed {action.output!r}"
                except SandboxError as e:
                    _checked[b] = str(e)
                except OSError as e:  # a tool it needs besides the backend (setpriv, nsenter, prlimit) is missing
                    _checked[b] = f"{b}: cannot run {e.filename or 'a tool it needs'} ({e.strerror})"
        if not _checked[b]:
            return b
        reasons.append(_checked[b])
    raise SandboxUnavailable(
        "cannot run commands isolated here (" + "; ".join(reasons or ["neither bwrap nor unshare is installed"]) + "): "
        "install bubblewrap (apt-get install bubblewrap) or util-linux's unshare, on a kernel that allows user "
        "namespaces (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0)")


class Sandbox:
    """One throwaway environment: start it (``with Sandbox() as box``), :meth:`run` commands in it, close it.

    It lives as long as the thread that started it, at most: start and use it in a thread that outlives its use.

    Args:
        limits: what each action may use.
        backend: ``auto``, ``bwrap`` or ``unshare`` (see the module docstring).
    """

    def __init__(self, limits: Limits = Limits(), backend: str = "auto"):
        self._init(limits, check_available(backend))  # checked once per backend and process, then remembered

    def _init(self, limits: Limits, backend: str) -> None:
        self.limits = limits
        self.backend = backend
        self._holder: subprocess.Popen | None = None
        self._target = 0  # host pid whose namespaces the actions enter
        self._dir = ""

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        try:
            if self.backend == "bwrap":
                self._start_bwrap()
            else:
                self._start_unshare()
        except BaseException:
            self.close()
            raise

    def _start_unshare(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="genpi-sandbox-")  # an empty mount point, never written: the root is a tmpfs
        os.chmod(self._dir, 0o755)  # the unprivileged sandbox user mounts on it
        mountpoint = os.path.join(self._dir, "root")
        os.mkdir(mountpoint, 0o755)
        self._holder = self._spawn(_unshare_holder(mountpoint, self.limits))
        self._wait_ready()
        self._target = self._holder.pid  # unshare itself holds every namespace but the PID one, which actions leave

    def _start_bwrap(self) -> None:
        read, write = os.pipe()
        try:
            self._holder = self._spawn(_bwrap_holder(self.limits, write), pass_fds=(write,))
        finally:
            os.close(write)
        with os.fdopen(read) as f:
            info = f.read(4096)  # bwrap writes {"child-pid": N} and closes the fd once the sandbox runs
        self._wait_ready()
        try:
            self._target = int(json.loads(info)["child-pid"])
        except (ValueError, KeyError) as e:
            raise SandboxError(f"bwrap did not report its sandbox's pid ({info!r})") from e
        # /etc into the tmpfs, as the unshare setup copies it (what the sandbox's user can read), then the host's
        # /etc out of sight: both in the holder's own mount namespace, so every action sees the result
        setup = self._enter(False) + ["/bin/sh", "-c", f"cp -RP --preserve=mode,links,timestamps {_HOST_ETC}/. /etc/ "
                                      f"2>/dev/null; umount {_HOST_ETC} && rmdir {_HOST_ETC}"]
        done = subprocess.run(setup, stdin=subprocess.DEVNULL, capture_output=True, env=_clean_env(), cwd="/")
        if done.returncode != 0:
            raise SandboxError(f"bwrap could not set up /etc: {done.stderr.decode(errors='replace').strip()}")

    def _enter(self, own_pid_namespace: bool = True) -> list[str]:
        """The command prefix that enters the holder's namespaces (and, for an action, a PID namespace of its own)."""
        args = [*_setpriv(), "nsenter", f"--target={self._target}", "--user", "--mount", "--net", "--ipc",
                "--uts", "--preserve-credentials"]
        if own_pid_namespace:
            args += ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "--propagation", "private"]
        return args

    def _spawn(self, args: list[str], pass_fds=()) -> subprocess.Popen:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=_clean_env(), cwd="/", start_new_session=True, pass_fds=pass_fds)

    def _wait_ready(self) -> None:
        line = self._holder.stdout.readline().decode(errors="replace").strip()
        if line != "ready":
            self._holder.kill()
            err = self._holder.stderr.read().decode(errors="replace").strip().splitlines()
            raise SandboxError(f"{self.backend} could not start a sandbox: {err[-1] if err else 'no output'}")

    def run(self, command: str, seconds: float | None = None) -> Action:
        """Run ``command`` with ``bash -c`` as root in the sandbox, in ``/root``; return what it did.

        Every process the command started is killed when it returns (``bash`` is PID 1 of the action's own PID
        namespace), at the time limit, or as soon as it has written more than the output limit.
        """
        if self._holder is None or self._holder.poll() is not None:
            raise SandboxError("the sandbox is not running (it was closed, or its holder died)")
        lim = self.limits
        args = [*self._enter(), "/usr/bin/env", "-i", f"PATH={PATH}", "HOME=/root", "USER=root", "LOGNAME=root", "LANG=C.UTF-8",
                "TERM=dumb", "SHELL=/bin/bash",
                "prlimit", f"--nproc={lim.processes}", f"--as={lim.memory_mb * 1024 * 1024}",
                f"--nofile={lim.open_files}", f"--fsize={lim.disk_mb * 1024 * 1024}", "--core=0",
                "/bin/bash", "-c", 'cd /root && eval "$1"', "bash", command]
        start = time.monotonic()
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=_clean_env(), cwd="/", start_new_session=True)
        output = _CappedOutput(proc, lim.output_bytes)
        limit = seconds or lim.seconds
        output.join(timeout=limit)  # EOF: every process holding the pipe is gone
        timed_out = output.is_alive()
        if not timed_out:
            try:
                proc.wait(timeout=max(0.0, limit - (time.monotonic() - start)))
            except subprocess.TimeoutExpired:
                timed_out = True
        if timed_out or output.over:
            output.freeze()  # what the tools print as they are killed is not the command's output
            _kill(proc)
            output.join()
        code = None if timed_out or output.over else proc.returncode
        return Action(command, output.text(), code, round(time.monotonic() - start, 4), timed_out,
                      output.over and not timed_out)

    def close(self) -> None:
        """Kill the holder (its namespaces, processes and files go with it) and remove the empty mount point."""
        if self._holder is not None:
            _kill(self._holder)
            for stream in (self._holder.stdout, self._holder.stderr):
                if stream:
                    stream.close()
            self._holder = None
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = ""


def _clean_env() -> dict:
    """The environment of the tools that build the sandbox: nothing of the caller's (no key reaches them)."""
    return {"PATH": PATH, "LANG": "C.UTF-8"}


class _CappedOutput(threading.Thread):
    """Reads a process's output until it closes, keeping the first ``limit`` bytes; past them it kills the process
    (an output flood ends at once instead of at the time limit)."""

    def __init__(self, proc: subprocess.Popen, limit: int):
        super().__init__(daemon=True)
        self.proc, self.limit = proc, limit
        self.chunks: list[bytes] = []
        self.size, self.over = 0, False
        self.frozen: int | None = None  # bytes kept once the action is being killed
        self.start()

    def run(self) -> None:
        while chunk := self.proc.stdout.read1(65536):
            self.chunks.append(chunk)
            self.size += len(chunk)
            if self.size > self.limit and not self.over:
                self.over = True
                self.freeze()
                _kill(self.proc)

    def freeze(self) -> None:
        if self.frozen is None:
            self.frozen = min(self.size, self.limit)

    def text(self) -> str:
        keep = self.limit if self.frozen is None else self.frozen
        return b"".join(self.chunks)[:keep].decode(errors="replace")


def _kill(proc: subprocess.Popen) -> None:
    """Kill ``proc`` (a holder or an action) and everything it runs, and reap it.

    Its children (each the PID 1 of a namespace, whose death kills the rest of it) die first, so that ``proc``
    reaps them: killed together, they could outlive it for a moment and become zombies of the host's init,
    which in a container may never reap them. Then the process group, for anything left.
    """
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    except OSError:
        children = []
    for pid in children:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if children:
        try:
            proc.wait(timeout=2)  # unshare and bwrap exit once their child is gone
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
