#!/bin/bash
# run deploy/ansible/site.yml against the embedded lab (10.231.0.x only); $@ extra args
cd "$(dirname "$0")/../.."
set -a; . /var/lib/poc1-lab/secrets.env; set +a
export POC1_LAB_UPSTREAM_API_KEY=$(grep '^UPSTREAM_API_KEY=' /var/lib/poc1-lab/machines/gateway/root/etc/litellm/litellm.env 2>/dev/null | cut -d= -f2)
export ANSIBLE_HOST_KEY_CHECKING=True ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=False
# every address the inventory names must be the embedded lab's (10.231.0.x), as tests/test_deploy_playbook.py checks
if grep -o 'ansible_host: *[^,} ]*' deploy/ansible/inventories/local.yml | grep -vqE 'ansible_host: *10\.231\.0\.[0-9]+$'; then
  echo "refusing: an address outside the embedded lab in deploy/ansible/inventories/local.yml" >&2; exit 2
fi
exec timeout 600 ansible-playbook -i deploy/ansible/inventories/local.yml deploy/ansible/site.yml -e poc1_install_packages=false "$@"
