#!/bin/bash
# PyWren's own tests/ against shardwren.pywren: the referee of issue #17.
#
#   tools/pywren_referee.sh PYWREN_CHECKOUT [pytest args]
#
# PYWREN_CHECKOUT is a clone of github.com/pywren/pywren (measured at d898af6). In a
# temporary folder this puts a one-line `pywren` shim (import pywren -> shardwren.pywren)
# and the two test-only libraries PyWren's tests import (flaky, six) on PYTHONPATH, and
# runs the tests that do not need AWS itself. Left out: the Lambda, SQS, EC2 standalone,
# command-line and numba modules, Lambda runtime caching and versions, and the Lambda
# handler's overwrite_invoke_args tests.
set -euo pipefail
SRC=${1:?usage: tools/pywren_referee.sh PYWREN_CHECKOUT [pytest args]}; shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
WORK=$(mktemp -d /tmp/pywren-referee.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/shim" "$WORK/site"
cp -r "$SRC/tests" "$WORK/tests"
printf 'import sys\nimport shardwren.pywren as _impl\nsys.modules[__name__] = _impl\n' > "$WORK/shim/pywren.py"
"$VENV/bin/python" -m pip install -q --target "$WORK/site" flaky six
cd "$WORK"
export PATH=$VENV/bin:$PATH
export PYTHONPATH=$WORK/shim:$WORK/site:$WORK/tests
export SHARDWREN_STORE=file://$WORK/store SHARDWREN_WORKERS=2 SHARDWREN_CONFIG=$WORK/none.toml
export SHARDWREN_PROGRESS=false
"$VENV/bin/python" -m pytest -p no:cacheprovider --continue-on-collection-errors -q -rfE \
  --timeout 300 tests/test_simple.py tests/test_dummy_invoker.py tests/test_local_invoker.py \
  tests/test_util.py tests/test_pickle.py tests/test_modules.py tests/test_wrenhandler.py \
  tests/test_logs.py \
  --deselect tests/test_simple.py::RuntimeCaching::test_cached_runtime \
  --deselect tests/test_simple.py::ConfigErrors::test_version_mismatch \
  --deselect tests/test_wrenhandler.py::General "$@"
