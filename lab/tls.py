"""The lab's own certificate authority for the database link, made on the runner with openssl.

Why on the runner: the hosts' base rootfs stays as it is (no rebuild, no CA key inside a container), and
like the lab's secrets the CA is made fresh per lab and removed by `down` (it lives in the state dir).
The db host serves the certificate signed by it (names: its address and its host name); the gateway
gets only the CA certificate, to connect with ``sslmode=verify-full``.
"""
from __future__ import annotations

import secrets

from lab import layout
from lab.layout import DB
from lab.shell import run

CA_KEY = layout.TLS_DIR / "ca.key"
CA_CERT = layout.TLS_DIR / "ca.crt"
SERVER_KEY = layout.TLS_DIR / "server.key"
SERVER_CERT = layout.TLS_DIR / "server.crt"
DAYS = 365
#: what libpq's verify-full matches: the address in the gateway's URL, and the db host's name
SERVER_NAMES = (f"IP:{DB.ip}", f"DNS:{DB.name}")
CURVE = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
SERVER_EXTENSIONS = f"""basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = {", ".join(SERVER_NAMES)}
"""

#: the libpq parameters of the gateway's database URL, TLS on (verified) or off (clear text)
QUERY_ON = f"sslmode=verify-full&sslrootcert={layout.GATEWAY_DB_CA}"
QUERY_OFF = "sslmode=disable"


def present() -> bool:
    return all(p.is_file() for p in (CA_CERT, SERVER_CERT, SERVER_KEY))


def make_certificates() -> bool:
    """The CA and the db host's certificate, unless this lab has them; True if they were made now."""
    if present():
        return False
    layout.TLS_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    layout.TLS_DIR.chmod(0o700)  # the keys are only ever inside this directory
    csr, ext = layout.TLS_DIR / "server.csr", layout.TLS_DIR / "server.ext"
    run(["openssl", "req", "-x509", *CURVE, "-keyout", CA_KEY, "-out", CA_CERT, "-days", str(DAYS),
         "-subj", "/CN=poc1-lab database CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"], what="tls: making the lab's CA")
    run(["openssl", "req", "-new", *CURVE, "-keyout", SERVER_KEY, "-out", csr, "-subj", f"/CN={DB.name}"],
        what="tls: making the db host's key")
    ext.write_text(SERVER_EXTENSIONS)
    run(["openssl", "x509", "-req", "-in", csr, "-CA", CA_CERT, "-CAkey", CA_KEY, "-days", str(DAYS),
         "-set_serial", f"0x{secrets.token_hex(16)}", "-extfile", ext, "-out", SERVER_CERT],
        what="tls: signing the db host's certificate")
    csr.unlink()
    ext.unlink()
    for key in (CA_KEY, SERVER_KEY):
        key.chmod(0o600)
    return True
