"""``python -m tools.verify`` on real bundles: a GO bundle built through the evidence API (report by a real
pytest-html session, sealed and packed by validate's own functions) and a NO-GO bundle of the real suite
run by ``tools.validate`` against a loopback target where nothing listens. Untouched, both verify and
pass ``sha256sum -c``; one changed byte in any file, any removed file, an edited verdict, summary or
report, a foreign signature each fail naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from evidence_writers import seal
from evidence_writers.bundle import MANIFEST, REPORT, SIGNATURE, STATEMENT, SUMMARY, SUMS, UNSIGNED
from tests.support.evidence_bundles import ROOT, full_bundle, validate_nowhere
from tools import verify as VF


def verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.verify", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def verify_here(*args: str) -> subprocess.CompletedProcess[str]:
    """``tools.verify``'s own ``main`` in this process, for the tests that verify a bundle per file (the CLI
    itself is tested by the others): a Python start per bundle cost them ~1 s each, ~50 s in all."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = VF.main(list(args))
    return subprocess.CompletedProcess(["tools.verify", *args], rc, out.getvalue(), err.getvalue())


def failures(res: subprocess.CompletedProcess[str]) -> list[str]:
    return [
        ln.removeprefix("verify: FAIL ") for ln in res.stdout.splitlines() if ln.startswith("verify: FAIL ")
    ]


def reseal_sums(d: Path) -> None:
    """What someone editing a file and covering their tracks without the key would do."""
    names = [ln.split("  ", 1)[1] for ln in (d / SUMS).read_text().splitlines()]
    (d / SUMS).write_text(
        "".join(
            f"{hashlib.sha256((d / n).read_bytes()).hexdigest()}  {n}\n" for n in names if (d / n).exists()
        )
    )


def reseal_statement(d: Path) -> None:
    st = json.loads((d / STATEMENT).read_text())
    for s in st["subject"]:
        s["digest"]["sha256"] = hashlib.sha256((d / s["name"]).read_bytes()).hexdigest()
    (d / STATEMENT).write_text(json.dumps(st, indent=2) + "\n")


@pytest.fixture(scope="module")
def go(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return full_bundle(tmp_path_factory.mktemp("go"))


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(private key, allowed signers listing it, allowed signers listing another key)."""
    d = tmp_path_factory.mktemp("keys")
    for name in ("release", "other"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(d / name)],
            check=True,
            timeout=30,
        )
        pub = " ".join((d / f"{name}.pub").read_text().split()[:2])
        (d / f"allowed_{name}").write_text(f'{name}@poc1 namespaces="{seal.NAMESPACE}" {pub}\n')
    return d / "release", d / "allowed_release", d / "allowed_other"


def test_an_untouched_go_bundle_verifies_and_passes_sha256sum(go: tuple[Path, Path]) -> None:
    evidence, tarball = go
    for target in (tarball, evidence):
        res = verify(str(target))
        assert res.returncode == 0, res.stdout + res.stderr
        assert (
            res.stdout.strip()
            .splitlines()[-1]
            .startswith(f"verify: OK {target}: run 20261201T094909Z-d2f172ff, verdict GO")
        )
        assert "signature: none (the bundle says it was not signed)" in res.stdout
    check = subprocess.run(
        ["sha256sum", "-c", SUMS], cwd=evidence, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    listed = {ln.rsplit(": ", 1)[0] for ln in check.stdout.splitlines() if ln.endswith(": OK")}
    on_disk = {p.name for p in evidence.iterdir() if not p.name.startswith(".")} - {SUMS}
    assert listed == on_disk and {MANIFEST, REPORT, SUMMARY, STATEMENT, UNSIGNED, "validation.json"} <= listed
    with tarfile.open(tarball) as tar:
        assert {Path(n).name for n in tar.getnames()} == on_disk | {SUMS}


def test_the_statement_is_in_toto_test_result_over_every_artifact(go: tuple[Path, Path]) -> None:
    evidence, _ = go
    st = json.loads((evidence / STATEMENT).read_text())
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == "https://in-toto.io/attestation/test-result/v0.1"
    subjects = {s["name"]: s["digest"]["sha256"] for s in st["subject"]}
    expected = {p.name for p in evidence.iterdir() if not p.name.startswith(".")} - seal.NOT_SUBJECTS
    assert set(subjects) == expected
    assert all(subjects[n] == hashlib.sha256((evidence / n).read_bytes()).hexdigest() for n in subjects)
    pred = st["predicate"]
    manifest = json.loads((evidence / MANIFEST).read_text())
    assert pred["result"] == "PASSED" and pred["failedTests"] == [] and pred["warnedTests"] == []
    assert pred["passedTests"] == [c["id"] for c in manifest["checks"]]
    config = {c["name"]: c for c in pred["configuration"]}
    assert config["inventory-group"]["annotations"]["group"] == "local"
    assert config["versions-lock"]["digest"]["sha256"] == manifest["versions_digest"]


def test_one_changed_byte_in_any_file_fails_naming_it(go: tuple[Path, Path], tmp_path: Path) -> None:
    evidence, _ = go
    names = sorted(p.name for p in evidence.iterdir() if not p.name.startswith("."))
    assert len(names) >= 15
    for name in names:
        d = tmp_path / name
        shutil.copytree(evidence, d)
        data = bytearray((d / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (d / name).write_bytes(bytes(data))
        res = verify_here(str(d))
        assert res.returncode == 1, (name, res.stdout)
        named = [f for f in failures(res) if f.startswith(f"{name}: ")]
        if name == SUMS:  # its own digest is nowhere; the line it breaks names the file it lists
            assert failures(res), res.stdout
        else:
            assert named, (name, res.stdout)


def test_any_removed_file_fails_naming_it(go: tuple[Path, Path], tmp_path: Path) -> None:
    evidence, _ = go
    for name in sorted(p.name for p in evidence.iterdir() if not p.name.startswith(".")):
        d = tmp_path / name
        shutil.copytree(evidence, d)
        (d / name).unlink()
        res = verify_here(str(d))
        assert res.returncode == 1, (name, res.stdout)
        assert any(f.startswith(f"{name}: ") for f in failures(res)), (name, res.stdout)


def test_an_edited_verdict_fails_even_with_the_hashes_recomputed(
    go: tuple[Path, Path], tmp_path: Path
) -> None:
    evidence, _ = go
    d = tmp_path / "edited"
    shutil.copytree(evidence, d)
    m = json.loads((d / MANIFEST).read_text())
    m["checks"][2]["outcome"] = "failed"  # the run's chat call failed, the verdict left at GO
    (d / MANIFEST).write_text(json.dumps(m, indent=2) + "\n")
    reseal_statement(d)
    reseal_sums(d)
    res = verify(str(d))
    assert res.returncode == 1
    fails = failures(res)
    assert any(
        f.startswith("manifest.json: verdict 'GO' does not follow from its checks: the rule gives NO-GO")
        for f in fails
    ), fails
    assert any(f.startswith(f"{SUMMARY}: is not the summary of manifest.json") for f in fails), fails
    assert any(f.startswith(f"{REPORT}: shows chat_call as 'PASS'") for f in fails), fails
    assert any(f.startswith(f"{STATEMENT}: predicate result") for f in fails), fails


def test_an_edited_summary_or_report_fails_even_with_the_hashes_recomputed(
    go: tuple[Path, Path], tmp_path: Path
) -> None:
    evidence, _ = go
    for name, old, new in (
        (SUMMARY, "Final Validation: PASSED", "Final Validation: PASSED (99.9% uptime)"),
        (REPORT, 'id="poc1-verdict">GO<', 'id="poc1-verdict">GO!<'),
    ):
        d = tmp_path / name
        shutil.copytree(evidence, d)
        text = (d / name).read_text()
        assert old in text
        (d / name).write_text(text.replace(old, new))
        reseal_statement(d)
        reseal_sums(d)
        fails = failures(verify(str(d)))
        assert [f for f in fails if f.startswith(f"{name}: ")] and all(
            f.startswith(f"{name}: ") for f in fails
        ), fails


def test_a_signed_bundle_verifies_against_its_signer_only(
    tmp_path: Path, signing: tuple[Path, Path, Path]
) -> None:
    key, allowed, other = signing
    evidence, tarball = full_bundle(tmp_path, signing_key=key)
    assert (evidence / SIGNATURE).is_file() and not (evidence / UNSIGNED).exists()
    assert b"PRIVATE KEY" not in b"".join(p.read_bytes() for p in evidence.iterdir() if p.is_file())
    ok = verify(str(tarball), f"--allowed-signers={allowed}")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert 'Good "poc1-acceptance" signature for release@poc1' in ok.stdout
    foreign = verify(str(tarball), f"--allowed-signers={other}")
    assert foreign.returncode == 1 and failures(foreign) == [f"{SIGNATURE}: made by a key not in {other}"]

    forged = tmp_path / "forged"  # verdict edited, statement and sums redone, old signature kept
    shutil.copytree(evidence, forged)
    st = json.loads((forged / STATEMENT).read_text())
    st["predicate"]["result"] = "WARNED"
    (forged / STATEMENT).write_text(json.dumps(st, indent=2) + "\n")
    reseal_sums(forged)
    res = verify(str(forged), f"--allowed-signers={allowed}")
    assert res.returncode == 1
    assert any(f.startswith(f"{SIGNATURE}: does not verify for release@poc1") for f in failures(res)), (
        res.stdout
    )

    unsigned_dir, _ = full_bundle(tmp_path, name="unsigned")
    refused = verify(str(unsigned_dir), f"--allowed-signers={allowed}")
    assert failures(refused) == [f"{STATEMENT}: not signed, but --allowed-signers asks for a signature"]


def test_a_tarball_with_a_foreign_member_or_no_tarball_at_all(go: tuple[Path, Path], tmp_path: Path) -> None:
    _, tarball = go
    bad = tmp_path / "extra.tar.gz"
    with tarfile.open(tarball) as src, tarfile.open(bad, "w:gz") as dst:
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m) if m.isreg() else None)
        info = tarfile.TarInfo("../escape.txt")
        info.size = 3
        dst.addfile(info, io.BytesIO(b"hi\n"))
    res = verify(str(bad))
    assert res.returncode == 1 and failures(res) == [
        "../escape.txt: not a plain file under evidence/ in the tarball"
    ]
    assert not (tmp_path.parent / "escape.txt").exists()

    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    for target in (junk, tmp_path / "absent"):
        res = verify(str(target))
        assert res.returncode == VF.EXIT_UNUSABLE and res.stdout == ""
        assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith(f"verify: {target}")


def test_a_real_no_go_run_of_validate_verifies_and_names_its_failures(tmp_path: Path) -> None:
    evidence = tmp_path / "evidence"
    res, target = validate_nowhere(tmp_path, evidence)
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-2000:]
    manifest = json.loads((evidence / MANIFEST).read_text())
    assert manifest["verdict"] == "NO-GO"
    tarball = tmp_path / f"evidence-{manifest['run_id']}.tar.gz"
    ok = verify(str(tarball))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"verdict NO-GO, {len(list(evidence.glob('[!.]*')))} files" in ok.stdout
    assert subprocess.run(["sha256sum", "-c", "--quiet", SUMS], cwd=evidence, timeout=60).returncode == 0
    for value in target.env.values():
        for p in evidence.iterdir():
            assert value.encode() not in p.read_bytes(), p.name
    make = subprocess.run(
        ["make", "-s", "verify", f"BUNDLE={tarball}"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert make.returncode == 0 and f"verify: OK {tarball}" in make.stdout, make.stdout + make.stderr
    usage = subprocess.run(["make", "-s", "verify"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert usage.returncode != 0 and "usage: make verify BUNDLE=" in usage.stdout
