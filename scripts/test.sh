#!/usr/bin/env bash
# Run the end-to-end test suite: install what is missing, build the module,
# run pytest (extra arguments are passed to pytest).
#   scripts/test.sh                 whole suite
#   scripts/test.sh -k chat -x      a subset
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

py=/usr/bin/python3
bash scripts/deps.sh

bash scripts/build.sh
rc=0
PYTHONDONTWRITEBYTECODE=1 XMPP_CM_SKIP_BUILD=1 "$py" -m pytest -v -p no:cacheprovider t/ "$@" || rc=$?
exit $rc
