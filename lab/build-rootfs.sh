#!/bin/sh
# Runs once per cache build inside the base rootfs (systemd-nspawn, not booted, runner's network):
# installs what BOTH lab hosts need (python3-apt, python3-setuptools: for the playbook's apt and pip modules), so that every lab-up only mounts an overlay on this tree.
# Daemons must not start here (policy-rc.d), and no per-lab state may stay behind (host keys, machine-id).
set -eu
export DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d

apt-get update -q
apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-unsafe-io \
    systemd systemd-sysv dbus openssh-server iproute2 procps ca-certificates \
    python3 python3-venv python3-apt python3-setuptools \
    postgresql-15

# the gateway's runtime, pinned to the versions the suite is tested with. Most wheels were fetched by the
# runner meanwhile (/wheels); what its Python resolves differently (markers) comes from the index.
python3 -m venv /opt/litellm/venv
/opt/litellm/venv/bin/pip install -q --find-links /wheels -r /wheels/requirements.txt
useradd --system --user-group --home-dir /var/lib/litellm --create-home --shell /usr/sbin/nologin litellm

systemctl enable systemd-networkd.service ssh.service
systemctl set-default multi-user.target
# nothing in the lab may dial out; these would only try
systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer 2>/dev/null || true

rm -f /etc/ssh/ssh_host_* /usr/sbin/policy-rc.d
: >/etc/machine-id
echo "build-rootfs: done"
