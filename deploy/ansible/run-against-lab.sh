#!/bin/bash
# Run deploy/ansible/site.yml against the embedded lab again (10.231.0.x only: lab/deploy.py refuses any
# other address in inventories/local.yml). Extra arguments go to ansible-playbook, e.g. --check --diff.
cd "$(dirname "$0")/../.." && exec python3 -m lab deploy "$@"
