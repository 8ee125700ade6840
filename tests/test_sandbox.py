"""The sandbox: model-written commands run isolated, and every way out that was tried is contained.

Each test runs real commands in a real sandbox, with every backend installed here (bwrap where it is, unshare on
every Linux), and checks both what the action reports and that the host did not change.
"""

from __future__ import annotations

import glob
import importlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from genpi.errors import UserError
from genpi.sandbox import (SANDBOX_UID, SHM_MB, Limits, Sandbox, SandboxError, SandboxUnavailable, backends,
                           check_available)


def _working_backends() -> list[str]:
    out = []
    for b in backends():
        try:
            out.append(check_available(b))
        except SandboxUnavailable:
            pass
    return out


WORKING = _working_backends()
pytestmark = pytest.mark.skipif(not WORKING, reason="no sandbox backend can isolate commands on this machine")


@pytest.fixture(params=WORKING or ["none"])
def box(request):
    with Sandbox(Limits(seconds=5, output_bytes=4096, disk_mb=32, processes=32), backend=request.param) as b:
        yield b


def _sandbox_processes() -> int:
    """Live processes started by this test process that are not a sandbox's init or holder."""
    out = subprocess.run(["ps", "-e", "-ww", "-o", "pid=,ppid=,stat=,args="], capture_output=True, text=True).stdout
    rows = {int(r[0]): r for r in (line.split(None, 3) for line in out.splitlines() if line.strip())}

    def ours(pid: int) -> bool:
        while pid > 1 and pid in rows:
            pid = int(rows[pid][1])
            if pid == os.getpid():
                return True
        return False

    return sum(1 for pid, r in rows.items() if ours(pid) and not r[2].startswith("Z") and "ps -e" not in r[-1]
               and not any(name in r[-1] for name in ("genpi-sandbox-init", "genpi.sandbox_unshare", "bwrap")))


def _as_sandbox_uid() -> list[str]:
    """The prefix that runs a host command as the host uid the sandboxes run as."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups"]


def _status(box: Sandbox) -> dict[str, str]:
    text = box.run("cat /proc/self/status").output
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}


# --- what an agent needs


def test_state_persists_within_a_sandbox_and_not_across(box):
    assert box.run("echo hello > note.txt && mkdir -p /srv/app && cp note.txt /srv/app/").exit_code == 0
    assert box.run("cat /srv/app/note.txt").output == "hello\n"
    assert box.run("pwd").output == "/root\n"
    with Sandbox(backend=box.backend) as other:
        action = other.run("cat /srv/app/note.txt")
    assert action.exit_code != 0 and "No such file" in action.output


def test_tools_of_the_host_run_and_exit_codes_are_reported(box):
    action = box.run("printf 'b\\na\\nb\\n' | sort | uniq -c | awk '{print $2 $1}'; exit 3")
    assert action.output == "a1\nb2\n" and action.exit_code == 3
    assert box.run("echo oops >&2").output == "oops\n"  # stderr is part of what the agent sees


# --- ways out


def test_no_network(box):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        action = box.run(f"echo hi > /dev/tcp/127.0.0.1/{port} && echo connected")
        assert "connected" not in action.output and action.exit_code != 0
        action = box.run("getent hosts pypi.org || echo no-dns; echo x > /dev/tcp/1.1.1.1/80 && echo out")
        assert "no-dns" in action.output and "out\n" not in action.output
    finally:
        server.close()


def test_host_files_are_neither_visible_nor_writable(box, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("sk-host-file-secret")
    action = box.run(f"cat {secret}; ls /work /home/*/.ssh 2>&1; grep -rsl sk-host-file-secret / "
                     "--exclude-dir={proc,dev,usr,bin,sbin,lib,lib32,lib64,libx32} | head -1; touch /usr/bin/genpi-evil; echo written > /etc/genpi-evil")
    assert "sk-host-file-secret" not in action.output
    assert "Read-only file system" in action.output
    assert not Path("/usr/bin/genpi-evil").exists() and not Path("/etc/genpi-evil").exists()
    assert box.run("cat /etc/genpi-evil").output == "written\n"  # the sandbox's own /etc is writable
    assert "sk-host-file-secret" in secret.read_text()


def test_the_callers_environment_does_not_reach_the_sandbox(box, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-parent-env-secret-123")
    action = box.run("env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; ps -eo args")
    assert "sk-parent-env-secret-123" not in action.output
    assert "HOME=/root" in action.output


def test_host_processes_are_invisible(box):
    action = box.run("ps -e -o pid= | wc -l; ls -d /proc/[0-9]* | wc -l")
    assert [int(n) for n in action.output.split()] == [4, 4]  # the sandbox's init (PID 1), bash, and ps or ls, and wc


def test_escaping_by_chroot_fails(box):
    action = box.run("perl -e 'mkdir \"x\"; chroot \"x\"; chdir \"..\" for 1..64; chroot \".\"; exec \"/bin/ls\", \"/\"'")
    assert "work" not in action.output.split() and "usr" in action.output.split()  # still the sandbox's root


def test_rm_rf_root_leaves_the_host_untouched(box, tmp_path):
    sentinel = tmp_path / "keep.txt"
    sentinel.write_text("still here")
    box.run("rm -rf --no-preserve-root / 2>/dev/null; true")
    assert sentinel.read_text() == "still here"
    assert Path("/usr/bin/env").exists() and Path("/etc/passwd").exists()
    with Sandbox(backend=box.backend) as fresh:  # the agent broke its own sandbox, and only that one
        assert fresh.run("ls /usr/bin/env").output == "/usr/bin/env\n"


def test_an_infinite_loop_is_killed_at_the_time_limit(box):
    start = time.monotonic()
    action = box.run("while :; do :; done", seconds=1)
    assert action.timed_out and action.exit_code is None
    assert time.monotonic() - start < 4
    assert "[killed: still running after the time limit]" in action.text()
    assert box.run("echo alive").output == "alive\n"


def test_background_processes_die_with_their_action(box):
    action = box.run("sleep 600 & setsid sleep 601 & nohup sleep 602 >/dev/null 2>&1 & echo started")
    assert action.output == "started\n" and not action.timed_out
    time.sleep(0.2)
    ps = subprocess.run(["ps", "-e", "-o", "args="], capture_output=True, text=True).stdout
    assert not any(f"sleep {n}" in ps for n in (600, 601, 602))


def test_a_fork_bomb_is_contained(box):
    action = box.run(":(){ :|:& };:; sleep 1; echo done", seconds=3)
    assert action.exit_code is None or "done" in action.output or "fork" in action.output
    time.sleep(0.3)
    assert _sandbox_processes() == 0
    assert box.run("echo alive").output == "alive\n"


def test_an_output_flood_is_cut_at_the_limit_and_killed(box):
    start = time.monotonic()
    action = box.run("yes flood")
    assert action.truncated and len(action.output.encode()) == box.limits.output_bytes
    assert time.monotonic() - start < 3  # killed at the limit, not at the time limit
    assert action.text().endswith("[killed: output limit reached]")


def test_memory_and_disk_are_limited(box):
    action = box.run("head -c 2000000000 /dev/zero | tail | wc -c")
    assert "memory exhausted" in action.output or "Cannot allocate" in action.output
    action = box.run("dd if=/dev/zero of=/root/big bs=1M count=200 2>/dev/null; stat -c %s /root/big; rm -f /root/big")
    assert int(action.output.split()[-1]) <= box.limits.disk_mb << 20


def test_dev_sys_and_proc_hold_what_docs_sandbox_md_says(box):
    action = box.run("ls -A /dev | tr '\\n' ' '; echo; ls /sys 2>&1; echo evil 2>/dev/null > /proc/sys/kernel/hostname; hostname;"
                     " touch /dev/x /proc/x 2>&1 | grep -c 'Read-only\\|No such\\|Permission'")
    devices, sys_dir, hostname, refused = action.output.splitlines()
    assert devices.split() == ["fd", "full", "null", "random", "shm", "stderr", "stdin", "stdout", "urandom", "zero"]
    assert "No such file" in sys_dir and hostname == "sandbox" and refused == "2"


# --- the attacks of issue 19, each on every backend: each test checks that the attack's effect did not happen


def test_an_action_holds_no_capability_has_no_new_privs_and_a_seccomp_filter(box):
    status = _status(box)
    assert {cap: int(status[cap], 16) for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")} == \
        {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0, "CapAmb": 0}
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"  # 2: a filter


def test_attack_kill_all_reaches_only_the_sandbox(box):
    bystander = subprocess.Popen([*_as_sandbox_uid(), "sleep", "300"])  # a host process of the sandboxes' uid
    try:
        with Sandbox(backend=box.backend) as other:
            other.run("echo kept > /root/f")
            box.run("kill -9 -1; kill -9 1; sleep 0.3")
            assert bystander.poll() is None
            assert other.run("cat /root/f").output == "kept\n"
            assert box.run("echo alive").output == "alive\n"
    finally:
        bystander.kill()
        bystander.wait()


def test_attack_a_daemon_does_not_outlive_its_action_or_reach_the_host(box):
    box.run("setsid sh -c 'sleep 0.5; echo leftover > /tmp/late' >/dev/null 2>&1 & disown; nohup sleep 555 &")
    time.sleep(0.8)
    action = box.run("cat /tmp/late 2>&1; ls -d /proc/[0-9]* | wc -l")
    assert "No such file" in action.output and action.output.split()[-1] == "4"  # init, bash, ls, wc
    assert "sleep 555" not in subprocess.run(["ps", "-e", "-o", "args="], capture_output=True, text=True).stdout


def test_attack_planted_tools_and_loader_files_never_run(box):
    host_dir = Path(tempfile.mkdtemp(prefix="genpi-test-"))
    host_dir.chmod(0o777)  # a fake that ran on the host side, as any uid, could leave its mark here
    marker = host_dir / "pwned"
    try:
        fake = f"#!/bin/sh\\necho PWNED; touch {marker}\\n"
        box.run(f"printf '{fake}' > /tmp/fake; chmod +x /tmp/fake; "
                "for t in /usr/bin/setpriv /usr/bin/bash /usr/bin/env /usr/bin/nsenter /usr/bin/unshare /usr/bin/tar; do"
                " mount --bind /tmp/fake $t; cp /tmp/fake $t; done; mkdir -p /usr/local/sbin; cp /tmp/fake /usr/local/sbin/unshare;"
                " echo /tmp/fake.so > /etc/ld.so.preload; : > /etc/ld.so.cache; mv /etc /etc.old;"
                " rm -rf /lib64 /bin /usr; ln -sfn /tmp /lib64; true")
        after = box.run("cat /etc/ld.so.preload; echo next; grep CapEff /proc/self/status")
        assert after.output == "next\nCapEff:\t0000000000000000\n"
        assert not marker.exists()
        assert Path("/etc/ld.so.cache").stat().st_size > 0
    finally:
        shutil.rmtree(host_dir)


def test_attack_mounts_cannot_be_changed(box):
    mounts = box.run("cat /proc/self/mountinfo").output
    box.run("mount -o remount,bind,rw /usr; mount -o remount,rw /usr; umount /proc; umount -l /usr; umount /etc;"
            " mount -t tmpfs big /mnt; mount -o remount,size=4g /; mount --bind /tmp /usr/bin; true")
    assert box.run("cat /proc/self/mountinfo").output == mounts
    action = box.run("touch /usr/genpi-evil /usr/bin/genpi-evil 2>&1; df -m / | tail -1")
    assert action.output.count("Read-only file system") == 2
    assert not Path("/usr/genpi-evil").exists() and not Path("/usr/bin/genpi-evil").exists()
    assert int(action.output.split()[-5]) == box.limits.disk_mb  # the root's size: still the limit


def test_attack_a_check_cannot_be_forged_through_pid_1(box):
    box.run("umount /proc; nsenter -t 1 -m mount --bind /usr/bin/true /usr/bin/false; true")
    assert box.run("false; echo $?").output == "1\n"


def test_attack_a_new_user_namespace_gives_no_capability(box):
    action = box.run("unshare -Urm sh -c 'echo inside; mount -t tmpfs x /mnt'; echo end")
    assert action.output.endswith("end\n") and "inside" not in action.output  # the namespace was never made


def test_attack_the_init_cannot_be_written_or_stopped(box):
    action = box.run("printf x | dd of=/proc/1/mem bs=1 seek=4194304 conv=notrunc; cat /proc/1/environ; kill -STOP 1;"
                     " kill -9 1; true")
    assert action.output.count("Permission denied") == 2  # the init holds a capability the action lacks
    assert box.run("echo alive").output == "alive\n"
    assert box.run("echo $$").exit_code == 0


def test_attack_memory_outside_the_limits_cannot_be_held(box):
    action = box.run("head -c 100M /dev/zero > /dev/shm/big 2>/dev/null; stat -c %s /dev/shm/big;"
                     " ipcmk -M 100000000 >/dev/null 2>&1; ipcs -m | grep -c '^0x'")
    shm_bytes, segments = (int(n) for n in action.output.split())
    assert shm_bytes <= SHM_MB << 20 and segments == 0  # /dev/shm is capped; no SysV segment exists
    action = box.run("perl -e 'for (1..60) { my $p = fork; last unless defined $p; if (!$p) { sleep 3; exit } }"
                     " print scalar(() = glob(\"/proc/[0-9]*\")), qq(\\n)'")
    assert box.limits.processes - 1 <= int(action.output) <= box.limits.processes  # unshare: its holder counts
    if box.run("command -v python3").exit_code == 0:
        action = box.run("python3 -c 'import os; os.memfd_create(\"x\")' 2>&1 | tail -1")
        assert "PermissionError" in action.output  # memory no tmpfs size bounds
    assert Limits().memory_bound_mb() == Limits().processes * Limits().memory_mb + Limits().disk_mb + 2 * SHM_MB


def test_a_sandbox_leaves_no_directory_on_the_host():
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "genpi-sandbox-*")))
    with Sandbox(backend=WORKING[0]) as b:
        b.run("echo x > /tmp/x")
        during = set(glob.glob(os.path.join(tempfile.gettempdir(), "genpi-sandbox-*")))
    assert during == before


def test_a_closed_sandbox_leaves_nothing_behind():
    with Sandbox(backend=WORKING[0]) as b:
        b.run("echo x > /tmp/x")
        holder, init = b._holder.pid, b._init_pid
    assert not Path(f"/proc/{holder}").exists() and not Path(f"/proc/{init}").exists()
    with pytest.raises(SandboxError, match="not running"):
        b.run("true")


def test_a_process_with_a_thousand_open_files_still_runs_commands():
    """An evaluation holds many sandboxes and files open: the sandbox's pipes may be numbered above 1024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"RLIMIT_NOFILE's hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
    try:
        with Sandbox(backend=WORKING[0]) as b:
            assert b.run("echo fine").output == "fine\n"
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_unknown_backend_is_a_one_line_error():
    with pytest.raises(UserError, match="unknown sandbox backend 'docker': choose auto, bwrap or unshare"):
        check_available("docker")


def test_no_backend_refuses_instead_of_running_unsandboxed(monkeypatch):
    import genpi.sandbox as sandbox

    monkeypatch.setattr(sandbox, "_checked", {})
    monkeypatch.setattr(sandbox.shutil, "which", lambda tool, path=None: None)
    sandbox.backends.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match="install bubblewrap"):
            Sandbox()
    finally:
        sandbox.backends.cache_clear()


def test_concurrent_sandboxes_do_not_see_each_other():
    with Sandbox(backend=WORKING[0]) as a, Sandbox(backend=WORKING[0]) as b:
        results = {}

        def work(name, box):
            box.run(f"echo {name} > /tmp/who")
            results[name] = box.run("cat /tmp/who; ls /tmp").output

        threads = [threading.Thread(target=work, args=(n, x)) for n, x in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == {"a": "a\nwho\n", "b": "b\nwho\n"}


@pytest.mark.parametrize("backend", WORKING or ["none"])
def test_a_killed_genpi_leaves_no_sandbox_or_command_running(backend, tmp_path):
    """SIGKILL of genpi while an action that cleared its own parent-death signal runs: nothing of it survives."""
    import signal

    if not os.access(sys.executable, os.X_OK):
        pytest.skip(f"this user cannot start {sys.executable} again")

    # prctl(PR_SET_PDEATHSIG, 0) (system call 157 on x86_64), then the long sleep
    clear = "perl -e 'syscall(157, 1, 0); exec qw(sleep 987654)'" if platform.machine() == "x86_64" else "sleep 987654"
    script = tmp_path / "victim.py"
    script.write_text(
        "from genpi.sandbox import Sandbox\n"
        f"box = Sandbox(backend={backend!r})\nbox.start()\n"
        "print(box._holder.pid, box._init_pid, flush=True)\n"
        f"box.run({clear!r}, seconds=60)\n")
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    holder, init = child.stdout.readline().split()
    deadline = time.monotonic() + 10
    while "sleep 987654" not in subprocess.run(["ps", "-e", "-o", "args="], capture_output=True, text=True).stdout:
        assert time.monotonic() < deadline, "the action never started"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        ps = subprocess.run(["ps", "-e", "-o", "pid=,stat=,args="], capture_output=True, text=True).stdout
        alive = [l for l in ps.splitlines() if not l.split()[1].startswith("Z")
                 and ("sleep 987654" in l or l.split()[0] in (holder, init))]
        if not alive:
            break
        time.sleep(0.1)
    assert not alive


def test_a_missing_helper_tool_is_a_reason_not_a_crash(monkeypatch):
    import genpi.sandbox as sandbox

    monkeypatch.setattr(sandbox, "_checked", {})
    monkeypatch.setattr(sandbox, "PATH", "/genpi-no-such-dir")  # where the host's tools are looked up
    with pytest.raises(SandboxUnavailable, match=r"unshare: cannot run setpriv \(No such file"):
        check_available("unshare")


_UNPRIVILEGED = "attack or holds_no_capability or killed_genpi or leaves"  # the tests run again as uid 65534


def _python_for_nobody(nobody: list[str], home: Path) -> tuple[str, dict]:
    """A Python that uid 65534 can run with genpi, pytest and pyseccomp importable: ``(executable, env)``.

    This interpreter when nobody can reach it; otherwise (a Python under a private home, as pyenv's in /root) the
    system's Python of the same minor version, with copies of the pure-Python test dependencies in ``home``.
    """
    repo = str(Path(__file__).parent.parent)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    works = lambda python, env: subprocess.run(  # noqa: E731
        [*nobody, python, "-c", "import genpi.sandbox, pytest, pyseccomp"], env=env, cwd="/",
        capture_output=True).returncode == 0
    if works(sys.executable, env):
        return sys.executable, env
    system = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}", path="/usr/bin:/bin")
    if system is None:
        pytest.skip(f"uid 65534 cannot run {sys.executable} and there is no system python3.{sys.version_info.minor}")
    site = home / "site"
    site.mkdir()
    for name in ("pytest", "_pytest", "pluggy", "iniconfig", "packaging", "pyseccomp", "py"):
        try:
            module = Path(importlib.import_module(name).__file__)
        except ImportError:
            continue
        source = module.parent if module.name == "__init__.py" else module
        (shutil.copytree if source.is_dir() else shutil.copy)(source, site / source.name)
    for path in [site, *site.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join([repo, str(site)])}
    if not works(system, env):
        pytest.skip(f"uid 65534 cannot import genpi.sandbox, pytest and pyseccomp with {system} either")
    return system, env


@pytest.mark.skipif(os.geteuid() != 0, reason="the tests above already ran unprivileged")
def test_the_attacks_fail_for_an_unprivileged_caller_too():
    """As root the sandbox runs as SANDBOX_UID; as any other user, as that user: the attack tests, as nobody."""
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    home = Path(tempfile.mkdtemp(prefix="genpi-test-nobody-"))
    home.chmod(0o777)
    try:
        python, env = _python_for_nobody(nobody, home)
        run = subprocess.run([*nobody, python, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-k", _UNPRIVILEGED,
                              "--basetemp", str(home / "pytest"), __file__], capture_output=True, text=True,
                             cwd=Path(__file__).parent.parent, env={**env, "HOME": str(home)},
                             timeout=600)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert run.returncode == 0 and " passed" in run.stdout, run.stdout[-3000:]
