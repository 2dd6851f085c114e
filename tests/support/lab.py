"""Reaching the embedded lab from tests as the acceptance suite does: the inventory group `local`
(hosts.yml), SSH with host keys verified against the lab's known_hosts (paramiko, nothing accepted
blindly), SQL from the runner as the read-only role, HTTP to the gateway."""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import paramiko
import yaml
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from db_init import make_engine

REPO = Path(__file__).resolve().parents[2]
GROUP = "local"


def local_group(inventory: Path = REPO / "hosts.yml") -> dict:
    """The inventory group `local`: {'hosts': {name: {...}}, 'vars': {...}}."""
    data = yaml.safe_load(inventory.read_text())
    return data["all"]["children"][GROUP]


def secret(name: str, secrets_file: str) -> str:
    """A lab secret by its variable name: the environment first, else the lab's 0600 file."""
    if os.environ.get(name):
        return os.environ[name]
    for line in Path(secrets_file).read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == name:
            return value.strip()
    raise KeyError(f"{name} is neither in the environment nor in {secrets_file}")


@dataclass(frozen=True)
class LocalLab:
    """The `local` group resolved: addresses, key paths, secrets."""

    hosts: dict[str, str]
    key_file: str
    known_hosts: str
    gateway_url: str
    master_key: str
    db_name: str
    db_port: int
    db_user: str
    db_password: str
    reader_user: str
    reader_password: str

    @classmethod
    def from_inventory(cls) -> "LocalLab":
        group = local_group()
        v = group["vars"]
        hosts = {name: h["ansible_host"] for name, h in group["hosts"].items()}
        secrets_file = v["secrets_env_file"]
        return cls(
            hosts=hosts,
            key_file=group["hosts"]["gateway"]["ansible_ssh_private_key_file"],
            known_hosts=v["known_hosts_file"], gateway_url=v["gateway_url"],
            master_key=secret(v["master_key_env"], secrets_file),
            db_name=v["db_name"], db_port=int(v["db_port"]), db_user=v["db_user"],
            db_password=secret(v["db_password_env"], secrets_file),
            reader_user=v["db_reader_user"],
            reader_password=secret(v["db_reader_password_env"], secrets_file),
        )

    # ------------------------------------------------------------------------------------ SSH
    def ssh(self, host: str, known_hosts: str | None = None, timeout: float = 10) -> paramiko.SSHClient:
        """A root SSH session; the host key must match known_hosts (RejectPolicy otherwise)."""
        client = paramiko.SSHClient()
        client.load_host_keys(known_hosts or self.known_hosts)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(self.hosts[host], port=22, username="root", key_filename=self.key_file,
                       timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                       allow_agent=False, look_for_keys=False)
        return client

    def run(self, host: str, command: str, timeout: float = 30) -> tuple[int, str, str]:
        client = self.ssh(host)
        try:
            _, out, err = client.exec_command(command, timeout=timeout)
            rc = out.channel.recv_exit_status()
            return rc, out.read().decode(errors="replace"), err.read().decode(errors="replace")
        finally:
            client.close()

    # ------------------------------------------------------------------------------------ SQL
    def db_url(self, user: str, password: str) -> URL:
        return URL.create("postgresql+psycopg2", username=user, password=password, host=self.hosts["db"],
                          port=self.db_port, database=self.db_name)

    def reader_engine(self, read_only: bool = True) -> Engine:
        return make_engine(self.db_url(self.reader_user, self.reader_password), read_only=read_only,
                           application_name="poc1-lab-tests")

    # ------------------------------------------------------------------------------------ HTTP
    def chat(self, content: str | None = None, key: str | None = None, timeout: float = 30) -> httpx.Response:
        body = {"model": "gpt-4o-mini", "user": "poc1-lab-tests",
                "messages": [{"role": "user", "content": content or f"lab test {uuid.uuid4().hex}"}]}
        return httpx.post(f"{self.gateway_url}/v1/chat/completions", json=body, timeout=timeout,
                          headers={"Authorization": f"Bearer {key or self.master_key}"})
