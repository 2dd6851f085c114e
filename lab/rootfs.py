"""The cached base rootfs: one Debian tree with both hosts' packages, built once, reused by every lab-up.

Cold build = debootstrap (minbase) while the runner downloads the gateway's wheels, then one
systemd-nspawn run of build-rootfs.sh (apt + venv). The .debs and wheels stay in the cache, so a rebuild
(after a change of the recipe) downloads nothing again.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time

from lab import cgroups, layout, mounts
from lab.errors import LabError
from lab.shell import clean_env, run

BUILD_SCRIPT = layout.LAB_DIR / "build-rootfs.sh"
REQUIREMENTS = layout.LAB_DIR / "requirements-gateway.txt"
BUILD_LOG = layout.CACHE_DIR / "build.log"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"


def recipe_hash() -> str:
    h = hashlib.sha256(layout.SUITE.encode())
    for f in (BUILD_SCRIPT, REQUIREMENTS):
        h.update(f.read_bytes())
    return h.hexdigest()


def is_current() -> bool:
    try:
        return (layout.BASE_ROOTFS / "usr/bin/systemctl").exists() and \
            layout.BASE_STAMP.read_text().strip() == recipe_hash()
    except OSError:
        return False


def discard_partial_build() -> None:
    """A killed build leaves base.tmp, perhaps with debootstrap's /proc and /sys still mounted."""
    left = mounts.unmount_all(layout.BUILD_TMP)
    if left:
        raise LabError(f"cannot unmount {left[0]} (left by an earlier build)")
    if layout.BUILD_TMP.exists():
        run(["rm", "-rf", "--one-file-system", layout.BUILD_TMP], what="removing a partial rootfs build")


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


def build(mirror: str) -> float:
    """Build the base rootfs from scratch; returns the seconds it took. A failed build leaves nothing."""
    try:
        return _build(mirror)
    except BaseException:
        discard_partial_build()
        raise


def _build(mirror: str) -> float:
    t0 = time.monotonic()
    discard_partial_build()
    for d in (layout.DEB_CACHE, layout.WHEEL_CACHE):
        d.mkdir(parents=True, exist_ok=True)
    BUILD_LOG.unlink(missing_ok=True)
    print(f"lab: building the base rootfs in {layout.CACHE_DIR} (once; log {BUILD_LOG})", flush=True)

    wheel_errors: list[str] = []
    wheels = threading.Thread(target=_download_wheels, args=(wheel_errors,), daemon=True)
    wheels.start()
    run(["debootstrap", "--variant=minbase", f"--cache-dir={layout.DEB_CACHE}", layout.SUITE,
         layout.BUILD_TMP, mirror], what="debootstrap of the base rootfs", timeout=900, log=BUILD_LOG)
    wheels.join()
    if wheel_errors:
        raise LabError(wheel_errors[0])
    print(f"lab: debootstrap done ({time.monotonic() - t0:.0f} s); installing packages", flush=True)

    shutil.copyfile(BUILD_SCRIPT, layout.BUILD_TMP / "root/build-rootfs.sh")
    binds = [f"--bind={layout.DEB_CACHE}:/var/cache/apt/archives", f"--bind-ro={layout.WHEEL_CACHE}:/wheels"]
    envs = ["--setenv=LANG=C.UTF-8"]
    if os.path.exists(HOST_CA):  # pip inside needs the workplace's CA bundle (lab-notes)
        binds.append(f"--bind-ro={HOST_CA}:/etc/poc1-host-ca.crt")
        envs += [f"--setenv={k}=/etc/poc1-host-ca.crt" for k in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")]
    nspawn = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--link-journal=no",
              "--console=pipe", "-D", str(layout.BUILD_TMP), *binds, *envs,
              "/bin/sh", "/root/build-rootfs.sh"]
    try:
        run(["sh", "-c", f"{cgroups.enter_prefix(layout.BUILD_CGROUP)} && exec \"$@\"", "sh", *nspawn],
            what="installing packages into the base rootfs", timeout=1200, log=BUILD_LOG)
    finally:
        cgroups.remove(layout.BUILD_CGROUP)
    (layout.BUILD_TMP / "root/build-rootfs.sh").unlink()

    if layout.BASE_ROOTFS.exists():
        run(["rm", "-rf", "--one-file-system", layout.BASE_ROOTFS], what="removing the outdated base rootfs")
    layout.BUILD_TMP.rename(layout.BASE_ROOTFS)
    layout.BASE_STAMP.write_text(recipe_hash() + "\n")
    return time.monotonic() - t0


def ensure(mirror_fn) -> float | None:
    """Build the base rootfs unless the cache holds one of the current recipe; seconds spent or None."""
    if is_current():
        return None
    return build(mirror_fn())
