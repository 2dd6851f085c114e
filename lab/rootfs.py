"""The cached base rootfs of each host role: a Debian tree with the role's packages, built once, reused by
every lab-up (an overlay on it). The gateway's on Debian 12 with the venv of the pinned versions; the
database's on Debian 13 with PostgreSQL 17 (or Debian 12 with 15, layout.PG_ENV).

Cold build = debootstrap (minbase) while the runner downloads the gateway's wheels, then one
systemd-nspawn run of build-rootfs.sh (apt, and the venv for the gateway). The .debs and wheels stay in
the cache, so a rebuild (after a change of the recipe) downloads nothing again. The two roles are built
one after the other (2 cores; debootstrap is mostly unpacking).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from lab import cgroups, layout, mounts
from lab.errors import LabError
from lab.layout import Base
from lab.shell import clean_env, run

BUILD_SCRIPT = layout.LAB_DIR / "build-rootfs.sh"
REQUIREMENTS = layout.LAB_DIR / "requirements-gateway.txt"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
BASES = (layout.GATEWAY_BASE, layout.DB_BASE)


def build_log(base: Base) -> Path:
    return layout.CACHE_DIR / f"build-{base.key}.log"


def recipe_hash(base: Base) -> str:
    h = hashlib.sha256(f"{base.suite}\n{' '.join(base.packages)}\n{base.venv}\n".encode())
    h.update(BUILD_SCRIPT.read_bytes())
    if base.venv:
        h.update(REQUIREMENTS.read_bytes())
    return h.hexdigest()


def is_current(base: Base) -> bool:
    try:
        return (base.dir / "usr/bin/systemctl").exists() and base.stamp.read_text().strip() == recipe_hash(base)
    except OSError:
        return False


def all_current() -> bool:
    return all(is_current(b) for b in BASES)


def discard_partial_build() -> None:
    """A killed build leaves base-*.tmp, perhaps with debootstrap's /proc and /sys still mounted."""
    for tmp in sorted(layout.CACHE_DIR.glob("base-*.tmp")) if layout.CACHE_DIR.is_dir() else []:
        left = mounts.unmount_all(tmp)
        if left:
            raise LabError(f"cannot unmount {left[0]} (left by an earlier build)")
        run(["rm", "-rf", "--one-file-system", tmp], what="removing a partial rootfs build")


def _download_wheels(errors: list[str]) -> None:
    layout.WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REQUIREMENTS, layout.WHEEL_CACHE / "requirements.txt")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
         "-d", str(layout.WHEEL_CACHE), "-r", str(REQUIREMENTS)],
        capture_output=True, text=True, timeout=900, env=clean_env(PIP_FIND_LINKS=""),
        stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        errors.append(f"pip download of the gateway's packages failed: {tail[-1] if tail else proc.returncode}")


def build(base: Base, mirror: str) -> float:
    """Build one base rootfs from scratch; returns the seconds it took. A failed build leaves nothing."""
    try:
        return _build(base, mirror)
    except BaseException:
        discard_partial_build()
        raise


def _build(base: Base, mirror: str) -> float:
    t0 = time.monotonic()
    tmp, log = base.build_tmp, build_log(base)
    discard_partial_build()
    for d in (base.debs, layout.WHEEL_CACHE):
        d.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    print(f"lab: building the {base.role} host's base rootfs (Debian {base.suite}) in {base.dir} "
          f"(once; log {log})", flush=True)

    wheel_errors: list[str] = []
    wheels = threading.Thread(target=_download_wheels, args=(wheel_errors,), daemon=True)
    if base.venv:
        wheels.start()
    run(["debootstrap", "--variant=minbase", f"--cache-dir={base.debs}", base.suite, tmp, mirror],
        what=f"debootstrap of the {base.role} host's rootfs ({base.suite})", timeout=900, log=log)
    if base.venv:
        wheels.join()
    if wheel_errors:
        raise LabError(wheel_errors[0])
    print(f"lab: debootstrap {base.suite} done ({time.monotonic() - t0:.0f} s); installing packages", flush=True)

    shutil.copyfile(BUILD_SCRIPT, tmp / "root/build-rootfs.sh")
    binds = [f"--bind={base.debs}:/var/cache/apt/archives"]
    envs = ["--setenv=LANG=C.UTF-8", f"--setenv=POC1_PACKAGES={' '.join(base.packages)}",
            f"--setenv=POC1_VENV={'1' if base.venv else '0'}"]
    if base.venv:
        binds.append(f"--bind-ro={layout.WHEEL_CACHE}:/wheels")
    if os.path.exists(HOST_CA):  # pip inside needs the workplace's CA bundle (lab-notes)
        binds.append(f"--bind-ro={HOST_CA}:/etc/poc1-host-ca.crt")
        envs += [f"--setenv={k}=/etc/poc1-host-ca.crt" for k in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")]
    nspawn = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--link-journal=no",
              "--console=pipe", "-D", str(tmp), *binds, *envs, "/bin/sh", "/root/build-rootfs.sh"]
    try:
        run(["sh", "-c", f"{cgroups.enter_prefix(layout.BUILD_CGROUP)} && exec \"$@\"", "sh", *nspawn],
            what=f"installing packages into the {base.role} host's rootfs", timeout=1200, log=log)
    finally:
        cgroups.remove(layout.BUILD_CGROUP)
    (tmp / "root/build-rootfs.sh").unlink()

    if base.dir.exists():
        run(["rm", "-rf", "--one-file-system", base.dir], what="removing the outdated base rootfs")
    tmp.rename(base.dir)
    base.stamp.write_text(recipe_hash(base) + "\n")
    return time.monotonic() - t0


def ensure(mirror_fn) -> float | None:
    """Build every base rootfs the cache lacks in its current recipe; seconds spent, or None if none."""
    todo = [b for b in BASES if not is_current(b)]
    if not todo:
        return None
    mirror = mirror_fn()
    return sum(build(b, mirror) for b in todo)


def remove_obsolete() -> list[str]:
    """The cache of before the split (one `base` tree for both hosts, .debs of one release): removed."""
    gone = []
    loose = sorted(layout.DEB_CACHE.glob("*.deb")) if layout.DEB_CACHE.is_dir() else []
    for deb in loose:
        deb.unlink()
    if loose:
        gone.append(f"{len(loose)} .deb files directly in {layout.DEB_CACHE}")
    for old in (layout.CACHE_DIR / "base", layout.CACHE_DIR / "base.stamp"):
        if old.is_dir():
            run(["rm", "-rf", "--one-file-system", old], what="removing the obsolete base rootfs")
            gone.append(str(old))
        elif old.exists():
            old.unlink()
            gone.append(str(old))
    return gone
