"""One lab host as a booted systemd-nspawn container: its overlay root, its process, commands inside it.

The container is managed by the PID of the systemd-nspawn we started (machinectl does not work without
systemd as the runner's PID 1); commands run in it through nsenter, not SSH, so fault-injection tests
can stop a unit or sshd itself and still get back in.
"""
from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from lab import cgroups, layout, mounts
from lab.errors import LabError
from lab.layout import Host
from lab.shell import clean_env, last_line, run
from tools.polling import poll_until

CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# ------------------------------------------------------------------------------------------ root


def make_root(host: Host) -> None:
    """The host's root: an overlay on its role's cached base (instant), else a full copy (cp -a)."""
    for d in ("upper", "work", "root"):
        (host.machine_dir / d).mkdir(parents=True, exist_ok=True)
    opts = (f"lowerdir={host.base.dir},upperdir={host.machine_dir / 'upper'},"
            f"workdir={host.machine_dir / 'work'}")
    mounted = subprocess.run(["mount", "-t", "overlay", f"poc1-{host.name}", "-o", opts, str(host.root)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        run(["cp", "-a", f"{host.base.dir}/.", host.root], what=f"{host.name}: copying the base rootfs",
            timeout=300)


# ------------------------------------------------------------------------------------------ processes


#: the systemd-nspawn processes this process started, by PID: their exit status is ours to read (not reaped
#: behind their back by ``_alive``, which would leave "exited" without a cause)
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


def _alive(pid: int) -> bool:
    if pid in _STARTED:
        return _STARTED[pid].poll() is None
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state == "Z":  # our own child that exited: reap it
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _argv(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def nspawn_pid(host: Host) -> int | None:
    """The PID in the host's PID file, if that process is still our nspawn (not a reused PID)."""
    try:
        pid = int(host.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid in _STARTED:  # our own child, unreaped: its PID cannot have been reused. Its argv is not
        # checked: between fork and exec it is this process's (`python -m lab up`), which read as "nspawn
        # exited during boot" when polled at once (CI, 1 in 4 rebuilds here) and made a second start
        # collide with the first ("Directory tree ... is currently busy")
        return pid if _alive(pid) else None
    if not _alive(pid):
        return None
    return pid if f"--machine={host.machine}".encode() in _argv(pid) else None


def stray_nspawn_pids(host: Host) -> list[int]:
    """systemd-nspawn processes for this machine name that we have no PID file for (a killed run)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = _argv(int(entry.name))
            if argv and argv[0].endswith(b"systemd-nspawn") and f"--machine={host.machine}".encode() in argv:
                found.append(int(entry.name))
    return found


def init_pid(host: Host) -> int | None:
    """The container's systemd (PID 1 in its PID namespace), a descendant of our systemd-nspawn."""
    top = nspawn_pid(host)
    if top is None:
        return None
    todo = _children(top)
    while todo:
        pid = todo.pop(0)
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        nspid = next((ln.split()[1:] for ln in status.splitlines() if ln.startswith("NSpid:")), [])
        if len(nspid) > 1 and nspid[-1] == "1":
            return pid
        todo.extend(_children(pid))
    return None


#: the hosts' priority over the runner's other processes: a VM has CPUs of its own, the lab's hosts share
#: this machine's 2 cores with whatever else runs (tests, builds). Measured: with other load at ~7 on 2
#: cores, a gateway's uvicorn workers never finished starting at nice 0 (uvicorn kills a worker that misses
#: its supervisor's 5 s ping while it imports LiteLLM, and starts another, forever)
NICE = -5


def start(host: Host) -> int:
    """Boot the container in its own cgroup, on the lab bridge, at priority NICE; returns the
    systemd-nspawn PID."""
    layout.LOG_DIR.mkdir(parents=True, exist_ok=True)
    nspawn = ["systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit", "--link-journal=no",
              "--console=read-only", "--resolv-conf=off", "--timezone=off",
              f"--machine={host.machine}", f"--hostname={host.name}", f"--network-bridge={layout.BRIDGE}",
              "-D", str(host.root)]
    with open(host.console_log, "ab") as log:
        proc = subprocess.Popen(
            ["nice", "-n", str(NICE), "sh", "-c", f'{cgroups.enter_prefix(host.cgroup)} && exec "$@"', "sh",
             *nspawn],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=clean_env())
    host.pid_file.write_text(f"{proc.pid}\n")
    _STARTED[proc.pid] = proc
    return proc.pid


def exit_cause(host: Host) -> str:
    """Why the host's systemd-nspawn is gone, in one line: its exit status and its console's last line.
    The console log is kept in CACHE_DIR (``failed-boot-<host>.log``): a failed ``up`` removes STATE_DIR."""
    try:
        pid = int(host.pid_file.read_text().strip())
    except (OSError, ValueError):
        pid = -1
    proc = _STARTED.get(pid)
    status = (f"exit code {proc.returncode}" if proc is not None and proc.returncode is not None
              else "exit status unknown")
    try:
        console = host.console_log.read_text(errors="replace")
    except OSError:
        console = ""
    kept = layout.CACHE_DIR / f"failed-boot-{host.name}.log"
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(console)
    except OSError:
        kept = host.console_log
    return f"{status}; console: {last_line(console[-3000:]) or '(nothing)'} (whole log: {kept})"


def wait_booted(host: Host, timeout: float = 60) -> str:
    """Wait until the container's systemd has finished start-up; returns its state (running/degraded)."""
    def system_state() -> str:
        if nspawn_pid(host) is None:
            raise LabError(f"{host.name}: systemd-nspawn exited during boot ({exit_cause(host)})")
        if init_pid(host) is None:
            return "no init"
        proc = exec_(host, ["systemctl", "is-system-running"], check=False, timeout=10)
        return proc.stdout.strip() or last_line(proc.stderr)

    booted, state = poll_until(system_state, lambda s: s in ("running", "degraded"), timeout=timeout,
                               interval=0.2)
    if booted:
        return state
    raise LabError(f"{host.name}: not booted within {timeout:.0f} s (system state: {state})")


def stop(host: Host, timeout: float = 20) -> list[str]:
    """Halt the container (SIGTERM to systemd-nspawn halts its systemd), kill what is left.

    Returns the PIDs that would not die (empty when clean)."""
    pids = [p for p in [nspawn_pid(host), *stray_nspawn_pids(host)] if p is not None]
    for pid in set(pids):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    poll_until(lambda: not any(_alive(p) for p in pids), timeout=timeout, interval=0.1)
    # what is left: an nspawn that ignored SIGTERM, or a container orphaned by a killed nspawn
    left = {p for p in pids if _alive(p)} | cgroups.pids(host.cgroup)
    for pid in left:  # nspawn ignored SIGTERM or died and left its container running: end them by id
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    poll_until(lambda: not ({p for p in left if _alive(p)} | cgroups.pids(host.cgroup)), timeout=5,
               interval=0.1)
    return [str(p) for p in ({p for p in left if _alive(p)} | cgroups.pids(host.cgroup))]


# ------------------------------------------------------------------------------------------ commands


def exec_(host: Host, cmd: Sequence[str], *, input: str | None = None, timeout: float = 60,
          check: bool = True, user: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` inside the container (all its namespaces, clean environment) and return the result.

    ``check`` raises LabError with the command's last output line when it exits non-zero."""
    pid = init_pid(host)
    if pid is None:
        raise LabError(f"{host.name}: the container is not running")
    prefix = ["nsenter", "-t", str(pid), "-a", "--", "/usr/bin/env", "-i", f"PATH={CONTAINER_PATH}",
              "LANG=C.UTF-8"]
    if user:
        prefix += ["runuser", "-u", user, "--"]
    try:
        proc = subprocess.run([*prefix, *cmd], input=input, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL if input is None else None)
    except subprocess.TimeoutExpired:
        raise LabError(f"{host.name}: `{' '.join(cmd)}` gave no result within {timeout:.0f} s") from None
    if check and proc.returncode != 0:
        raise LabError(f"{host.name}: `{' '.join(cmd)}` failed: "
                       f"{last_line(proc.stderr) or last_line(proc.stdout) or proc.returncode}")
    return proc


def remove_root(host: Host) -> list[str]:
    """Unmount and delete the host's directory; returns mounts that would not go."""
    left = mounts.unmount_all(host.machine_dir)
    if not left and host.machine_dir.exists():
        run(["rm", "-rf", "--one-file-system", host.machine_dir], what=f"{host.name}: removing its rootfs")
    propagate = layout.NSPAWN_PROPAGATE / host.machine
    if propagate.is_dir():
        run(["rm", "-rf", "--one-file-system", propagate], what=f"{host.name}: removing nspawn's propagate dir")
    return left
