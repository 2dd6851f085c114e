#!/bin/bash
# run the branch's playbook against the embedded lab (10.231.0.x only); $@ extra args
cd "$(dirname "$0")/../.."
set -a; . /var/lib/poc1-lab/secrets.env; set +a
export POC1_LAB_UPSTREAM_API_KEY=$(grep '^UPSTREAM_API_KEY=' /var/lib/poc1-lab/machines/gateway/root/etc/litellm/litellm.env 2>/dev/null | cut -d= -f2)
export ANSIBLE_HOST_KEY_CHECKING=True ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=False
grep -q "192\.168\|^ *ansible_host: [^1]" deploy/ansible/inventories/local.yml && { echo "refusing: non-lab address in inventory"; exit 2; }
exec timeout 600 ansible-playbook -i deploy/ansible/inventories/local.yml deploy/ansible/site.yml -e poc1_install_packages=false "$@"
