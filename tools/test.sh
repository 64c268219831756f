#!/usr/bin/env bash
# Set up (or reuse) the environment and run the test suite. Extra arguments go to pytest.
# "No tests collected" (pytest exit 5) is a failure.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
set +e
python -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
