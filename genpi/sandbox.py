"""A throwaway Linux environment for model-written shell commands: one per dialogue or task, never the host.

A :class:`Sandbox` is an *init* process, PID 1 of its own user, mount, PID, network, IPC and UTS namespaces. Its
root is a size-limited tmpfs with a copy of the host's readable ``/etc`` (a tmpfs of its own) and empty ``/root``,
``/home``, ``/tmp``, ``/var``...; the host's ``/usr``, ``/bin``, ``/lib``... are bind-mounted read-only, so the
host's tools run but cannot be changed. The init runs under a seccomp filter (:mod:`genpi.seccomp`), with
no_new_privs and, of all capabilities, only ``CAP_SETPCAP`` (to drop it from each action). Each :meth:`Sandbox.run`
writes one command to the init, which forks it as its child: ``bash -c`` with no capability at all, a clean
environment and resource limits. When the command's bash ends (or the host signals a time or output limit), the
init kills every other process of the sandbox (``kill -KILL -1`` from PID 1 reaches exactly the sandbox), waits
until they are gone and reports the exit code. Files persist between the actions of one sandbox (a dialogue's
earlier commands are seen by its later ones) and vanish with the init: the host's files never change.

The host side only ever writes commands to the init's stdin and reads its status line and the actions' output:
it never executes anything inside the sandbox (nothing an action wrote can run with the host's rights), and the
tools that build the sandbox run by absolute host paths resolved before it exists.

Backends: bubblewrap (``bwrap``) builds the sandbox where it is installed; otherwise the unshare backend does
(:mod:`genpi.sandbox_unshare`: ``unshare(2)`` and ``mount(2)`` from a fresh Python process, util-linux's
``pivot_root`` and ``setpriv``). When the process runs as root it first drops to an
unprivileged host uid (``SANDBOX_UID``), so the sandbox's root is root only inside its namespaces. When neither
backend can build a sandbox, :func:`check_available` raises a one-line :class:`SandboxUnavailable` that says what
to install; nothing ever runs unsandboxed. What an action can see and do: docs/SANDBOX.md.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from genpi.errors import UserError
from genpi.sandbox_layout import ACTION_ENV, DEVICES, EMPTY_DIRS, ETC_MB, PATH, SHM_MB, TOP_DIRS

SANDBOX_UID = 2_000_000_000  # the host uid a root caller drops to: no file or process on the host has it


class SandboxUnavailable(UserError):
    """Neither bubblewrap nor unshare can isolate a command on this machine."""


class SandboxError(RuntimeError):
    """A sandbox that was available could not be started (its setup's own error is in the message)."""


@dataclass(frozen=True)
class Limits:
    """What the sandbox may use. The wall-clock limit is enforced from outside; the others by the kernel.

    Without a cgroup, the sandbox's memory is bounded by ``processes * memory_mb`` (address space) plus its tmpfs
    mounts (``disk_mb`` + ``ETC_MB`` + ``SHM_MB``): :meth:`memory_bound_mb`.
    """

    seconds: float = 10.0  # wall clock per action: then every process of the action is killed
    memory_mb: int = 256  # address space per process (RLIMIT_AS)
    processes: int = 32  # processes in the sandbox at once, its init included (RLIMIT_NPROC): a fork bomb stops here
    output_bytes: int = 65_536  # stdout and stderr kept per action: the action is killed when it writes more
    disk_mb: int = 128  # size of the writable root (tmpfs), shared by every action of the sandbox
    open_files: int = 256  # file descriptors per process (RLIMIT_NOFILE)

    def memory_bound_mb(self) -> int:
        """The most memory one sandbox can hold: every process at its address-space limit, every tmpfs full."""
        return self.processes * self.memory_mb + self.disk_mb + ETC_MB + SHM_MB


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


# The sandbox's PID 1, for both backends: bash, started with ACTION_ENV, the sandbox's limits as hard rlimits (so
# nothing inside can raise them) and fds 0 (commands from the host, each ended by a NUL byte), 1 (status lines to
# the host), $1 (the actions' output, to the host) and $2 (bwrap: the sandbox user's view of the host's /etc as a
# tar stream; "-" when the root was built with /etc already copied).
INIT = r"""# genpi-sandbox-init
set -u
exec {out}>&"$1"; eval "exec $1>&-"
if [ "$2" != - ]; then
  /usr/bin/tar -x -C /etc --no-same-owner --exclude=./ld.so.preload --exclude=./ld.so.cache -f - <&"$2" 2>/dev/null
  eval "exec $2<&-"
fi
ulimit -u "$3" -v "$4" -n "$5" -f "$6" -c 0 -q 0 || exit 1
trap 'kill -KILL -1 2>/dev/null' USR1
exec 2>/dev/null  # from here on nobody reads it: a full pipe must never block the init
echo ready
while :; do
  IFS= read -r -d '' cmd || { (( $? > 128 )) && continue; exit 0; }
  ( exec </dev/null >&"$out" 2>&1 {out}>&-; cd /root 2>/dev/null || cd /
    exec /usr/bin/setpriv --bounding-set=-all --inh-caps=-all --ambient-caps=-all -- /bin/bash -c "$cmd" bash ) &
  pid=$!
  while wait "$pid"; code=$?; (( code > 128 )) && kill -0 "$pid" 2>/dev/null; do :; done
  kill -KILL -1 2>/dev/null
  while p=(/proc/[0-9]*); (( ${#p[@]} > 1 )); do kill -KILL -1 2>/dev/null; wait 2>/dev/null; done
  echo "exit $code"
done
"""


def init_args(limits: Limits, output_fd: int, etc_fd: int | None) -> list[str]:
    """``bash -c INIT`` and its arguments (the limits in ulimit's units: KiB for memory and file size)."""
    return ["/bin/bash", "-c", INIT, "genpi-sandbox-init", str(output_fd), "-" if etc_fd is None else str(etc_fd),
            str(limits.processes), str(limits.memory_mb * 1024), str(limits.open_files), str(limits.disk_mb * 1024)]


def _setpriv() -> list[str]:
    """The prefix of every command that builds a sandbox: it dies with the thread that started it (so a killed genpi
    leaves no sandbox running), and, as root, it runs as ``SANDBOX_UID`` (its user namespace maps root to that
    uid)."""
    args = [_tool("setpriv"), "--pdeathsig", "KILL"]
    if os.geteuid() == 0:
        args += [f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups"]
    return args


def _tool(name: str) -> str:
    """A host tool's absolute path, looked up on the host's PATH before any sandbox exists."""
    path = shutil.which(name, path=PATH)
    if not path:
        raise FileNotFoundError(2, "No such file or directory", name)
    return path


def _bwrap_args(limits: Limits, info_fd: int, seccomp_fd: int, empty_fd: int, output_fd: int, etc_fd: int) -> list[str]:
    args = [*_setpriv(), _tool("bwrap"), "--unshare-user", "--uid", "0", "--gid", "0", "--unshare-pid",
            "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox",
            "--die-with-parent", "--new-session", "--as-pid-1", "--info-fd", str(info_fd),
            "--cap-drop", "ALL", "--cap-add", "CAP_SETPCAP", "--seccomp", str(seccomp_fd),
            "--size", str(limits.disk_mb << 20), "--perms", "0755", "--tmpfs", "/", "--ro-bind", "/usr", "/usr"]
    for d in TOP_DIRS:
        if (Path("/") / d).is_dir():  # a symlink to a directory too: its target is bound, read-only
            args += ["--ro-bind", f"/{d}", f"/{d}"]
    args += ["--size", str(ETC_MB << 20), "--perms", "0755", "--tmpfs", "/etc",
             "--ro-bind-data", str(empty_fd), "/etc/ld.so.preload"]
    if Path("/etc/ld.so.cache").is_file():
        args += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    args += ["--proc", "/proc", "--size", str(1 << 20), "--tmpfs", "/dev"]
    for n in DEVICES:
        args += ["--dev-bind", f"/dev/{n}", f"/dev/{n}"]
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        args += ["--symlink", target, f"/dev/{name}"]
    args += ["--size", str(SHM_MB << 20), "--perms", "1777", "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
             "--perms", "0700", "--dir", "/root"]
    for d in EMPTY_DIRS:
        args += ["--perms", "1777" if d.endswith("tmp") else "0755", "--dir", f"/{d}"]
    return args + ["--chdir", "/", "--clearenv", *(a for k, v in ACTION_ENV.items() for a in ("--setenv", k, v)),
                   *init_args(limits, output_fd, etc_fd)]


@cache
def backends() -> tuple[str, ...]:
    """The backends installed here, preferred first (whether they can isolate is up to the kernel: see
    :func:`check_available`)."""
    return tuple(b for b, tool in (("bwrap", "bwrap"), ("unshare", "pivot_root")) if shutil.which(tool, path=PATH))


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
            _checked[b] = _try_backend(b)
        if not _checked[b]:
            return b
        reasons.append(_checked[b])
    raise SandboxUnavailable(
        "cannot run commands isolated here (" + "; ".join(reasons or ["neither bwrap nor unshare is installed"]) + "): "
        "install bubblewrap (apt-get install bubblewrap) or util-linux, and libseccomp2, on a kernel that allows "
        "user namespaces (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0)")


def _try_backend(backend: str) -> str:
    """"" when ``backend`` starts a sandbox that runs a command here, else why not."""
    if backend == "bwrap" and not shutil.which("bwrap", path=PATH):
        return "bwrap is not installed"
    try:
        box = Sandbox.__new__(Sandbox)  # unchecked: this is the check
        box._init(Limits(), backend)
        with box:
            action = box.run("echo ok")
        return "" if action.output.strip() == "ok" else f"{backend}: a test command printed {action.output!r}"
    except (SandboxError, UserError) as e:
        return f"{backend}: {e}"
    except OSError as e:  # a tool it needs (setpriv, pivot_root, tar) is missing
        return f"{backend}: cannot run {e.filename or 'a tool it needs'} ({e.strerror})"


class Sandbox:
    """One throwaway environment: start it (``with Sandbox() as box``), :meth:`run` commands in it, close it.

    It lives as long as the thread that started it, at most: start and use it in a thread that outlives its use.

    Args:
        limits: what the sandbox may use.
        backend: ``auto``, ``bwrap`` or ``unshare`` (see the module docstring).
    """

    def __init__(self, limits: Limits = Limits(), backend: str = "auto"):
        self._init(limits, check_available(backend))  # checked once per backend and process, then remembered

    def _init(self, limits: Limits, backend: str) -> None:
        self.limits = limits
        self.backend = backend
        self._holder: subprocess.Popen | None = None  # bwrap, or the unshare backend's builder: the init's parent
        self._init_pid = 0  # the sandbox's PID 1, as the host numbers it
        self._output = -1  # read end of the actions' output pipe
        self._status = b""  # what the init wrote on its status pipe and was not yet parsed

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        """Build the sandbox and wait until its init is ready for commands."""
        from genpi import seccomp

        read, write = os.pipe()
        self._output = read
        try:
            if self.backend == "bwrap":
                self._start_bwrap(seccomp.bpf(), write)
            else:
                self._start_unshare(seccomp.bpf(), write)
            if self._read_status() != "ready":
                raise SandboxError(f"{self.backend} could not start a sandbox: {self._stderr() or 'no output'}")
            if not self._init_pid:  # the unshare builder's only child
                self._init_pid = int(Path(f"/proc/{self._holder.pid}/task/{self._holder.pid}/children").read_text())
        except BaseException:
            self.close()
            raise
        finally:
            os.close(write)

    def _start_bwrap(self, bpf: bytes, output: int) -> None:
        info_r, info_w = os.pipe()
        seccomp_r, seccomp_w = os.pipe()
        empty_r, empty_w = os.pipe()
        os.write(seccomp_w, bpf)  # well under a pipe's capacity
        for fd in (seccomp_w, empty_w):
            os.close(fd)
        etc = subprocess.Popen([*_setpriv(), _tool("tar"), "-C", "/etc", "-cf", "-", "."], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_clean_env(), cwd="/")
        try:
            fds = (info_w, seccomp_r, empty_r, output, etc.stdout.fileno())
            self._holder = self._spawn(_bwrap_args(self.limits, *fds), pass_fds=fds)
        finally:
            for fd in (info_w, seccomp_r, empty_r):
                os.close(fd)
            etc.stdout.close()
        with os.fdopen(info_r) as f:
            info = f.read(4096)  # bwrap writes {"child-pid": N} and closes the fd once the sandbox runs
        etc.wait()
        try:
            self._init_pid = int(json.loads(info)["child-pid"])
        except (ValueError, KeyError) as e:
            raise SandboxError(f"bwrap could not start a sandbox: {self._stderr() or repr(info)}") from e

    def _start_unshare(self, bpf: bytes, output: int) -> None:
        # the builder imports this genpi and the standard library it runs on (-I -S: nothing from the environment)
        path = [str(Path(__file__).resolve().parent.parent), *(p for p in sys.path if p)]
        builder = f"import sys; sys.path[:] = {path!r}; from genpi.sandbox_unshare import main; main(sys.argv[1:])"
        uid = SANDBOX_UID if os.geteuid() == 0 else -1
        args = [sys.executable, "-I", "-S", "-c", builder, str(os.getpid()), str(uid), str(self.limits.disk_mb),
                str(ETC_MB), str(SHM_MB), _tool("setpriv"), *init_args(self.limits, output, None)]
        for tool in ("pivot_root", "cp"):
            _tool(tool)  # the builder's setup runs them: a missing one is a reason, found here
        self._holder = self._spawn(args, pass_fds=(output,))
        self._holder.stdin.write(len(bpf).to_bytes(4, "little") + bpf)
        self._holder.stdin.flush()

    def _spawn(self, args: list[str], pass_fds=()) -> subprocess.Popen:
        return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=_clean_env(), cwd="/", start_new_session=True, pass_fds=pass_fds)

    def _stderr(self) -> str:
        """The last line the holder wrote on stderr, once it has exited ("" while it runs)."""
        try:
            self._holder.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return ""
        lines = self._holder.stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""

    def _read_status(self, timeout: float = 30.0) -> str:
        """The init's next status line ("" when it closed its end, or after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        fd = self._holder.stdout.fileno()
        while b"\n" not in self._status:
            left = deadline - time.monotonic()
            if left <= 0 or not _ready([fd], left):
                return ""
            chunk = os.read(fd, 4096)
            if not chunk:
                return ""
            self._status += chunk
        line, self._status = self._status.split(b"\n", 1)
        return line.decode(errors="replace")

    def run(self, command: str, seconds: float | None = None) -> Action:
        """Run ``command`` with ``bash -c`` as root (without capabilities) in the sandbox, in ``/root``.

        Every process the command started is killed when its bash returns, at the time limit, or as soon as it has
        written more than the output limit.
        """
        if self._holder is None or self._holder.poll() is not None or self._init_pid == 0:
            raise SandboxError("the sandbox is not running (it was closed, or its init died)")
        limit = seconds or self.limits.seconds
        start = time.monotonic()
        try:
            self._holder.stdin.write(command.replace("\0", "").encode() + b"\0")
            self._holder.stdin.flush()
        except BrokenPipeError as e:
            raise SandboxError("the sandbox is not running (its init died)") from e
        kept, size, over, timed_out, status = [], 0, False, False, ""
        status_fd = self._holder.stdout.fileno()
        while True:
            if b"\n" in self._status:
                status = self._read_status()
                break
            left = start + limit - time.monotonic()
            if left <= 0 and not (timed_out or over):
                timed_out = True
                self._signal_init()
            wait = 5.0 if timed_out or over else max(left, 0.05)  # once killed: the init's answer
            ready = _ready([self._output, status_fd], wait)
            if not ready and (timed_out or over):
                break  # the init did not answer a kill: the sandbox is closed below
            if self._output in ready:
                chunk = os.read(self._output, 65536)
                if not over:
                    kept.append(chunk)
                    size += len(chunk)
                    if size > self.limits.output_bytes:
                        over = True
                        self._signal_init()
            if status_fd in ready:
                chunk = os.read(status_fd, 4096)
                if not chunk:
                    break  # the init died
                self._status += chunk
        if not over:  # what the action wrote is all in the pipe: its writers are gone
            kept.append(self._drain())
        else:
            self._drain()
        if not status.startswith("exit "):
            self.close()
        code = None if timed_out or over or not status.startswith("exit ") else _int(status[5:])
        keep = self.limits.output_bytes
        return Action(command, b"".join(kept)[:keep].decode(errors="replace"), code,
                      round(time.monotonic() - start, 4), timed_out, over and not timed_out)

    def _signal_init(self) -> None:
        """Ask the init to kill the running action (and everything else of the sandbox but itself)."""
        try:
            os.kill(self._init_pid, signal.SIGUSR1)
        except (ProcessLookupError, PermissionError):
            pass

    def _drain(self) -> bytes:
        os.set_blocking(self._output, False)
        chunks = []
        try:
            while chunk := os.read(self._output, 65536):
                chunks.append(chunk)
        except BlockingIOError:
            pass
        finally:
            os.set_blocking(self._output, True)
        return b"".join(chunks)

    def close(self) -> None:
        """Kill the sandbox: its init first (the kernel then kills every process in it), then its holder."""
        if self._holder is not None:
            if self._init_pid:
                try:
                    os.kill(self._init_pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            _kill(self._holder)
            for stream in (self._holder.stdin, self._holder.stdout, self._holder.stderr):
                if stream:
                    try:
                        stream.close()
                    except BrokenPipeError:
                        pass
            self._holder = None
        self._init_pid = 0
        if self._output != -1:
            os.close(self._output)
            self._output = -1


def _ready(fds: list[int], seconds: float) -> list[int]:
    """The fds of ``fds`` that can be read (or are closed) within ``seconds``: poll(2), which, unlike select(2),
    takes fds above 1024 (an evaluation may hold hundreds of sandboxes open)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, _ in poller.poll(seconds * 1000)]


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:  # the init's status is the sandbox's word: anything but a number is no exit code
        return None


def _clean_env() -> dict:
    """The environment of the tools that build the sandbox: nothing of the caller's (no key reaches them)."""
    return {"PATH": PATH, "LANG": "C.UTF-8"}


def _kill(proc: subprocess.Popen) -> None:
    """Kill ``proc`` (bwrap or the unshare builder) and everything it runs, and reap it.

    Its children (the sandbox's init, whose death kills the rest of it) die first, so that ``proc`` reaps them:
    killed together, they could outlive it for a moment and become zombies of the host's init, which in a
    container may never reap them. Then the process group, for anything left.
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
            proc.wait(timeout=2)  # bwrap and the builder exit once their child is gone
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
