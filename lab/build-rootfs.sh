#!/bin/sh
# Runs once per cache build inside one role's base rootfs (systemd-nspawn, not booted, runner's network):
# installs $POC1_PACKAGES (python3 and python3-apt on every host: what Ansible's modules need; the role's
# own packages) and, with POC1_VENV=1, the gateway's venv of the pinned versions, so that every lab-up
# only mounts an overlay on this tree and the playbook finds its packages and venv in place.
# Daemons must not start here (policy-rc.d), and no per-lab state may stay behind (host keys, machine-id).
set -eu
export DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d

apt-get update -q
# shellcheck disable=SC2086  # the package list is words
apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-unsafe-io \
    systemd systemd-sysv dbus openssh-server iproute2 procps ca-certificates $POC1_PACKAGES

if [ "${POC1_VENV:-0}" = 1 ]; then
    # the gateway's runtime, pinned to the versions the suite is tested with. Most wheels were fetched by the
    # runner meanwhile (/wheels); what its Python resolves differently (markers) comes from the index.
    python3 -m venv /opt/litellm/venv
    /opt/litellm/venv/bin/pip install -q --find-links /wheels -r /wheels/requirements.txt
    # what the playbook's venv task compares (roles/poc1_gateway): this venv holds exactly these pins
    cp /wheels/requirements.txt /opt/litellm/venv/poc1-requirements.txt
fi

systemctl enable systemd-networkd.service ssh.service
systemctl set-default multi-user.target
# nothing in the lab may dial out; these would only try
systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer 2>/dev/null || true

rm -f /etc/ssh/ssh_host_* /usr/sbin/policy-rc.d
: >/etc/machine-id
echo "build-rootfs: done"
