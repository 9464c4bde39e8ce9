#!/usr/bin/env bash
# Run diffusers' pipeline test suites against ICLEVRPipeline from a diffusers checkout (source of the installed version,
# or close to it): bash tests/diffusers_conformance/run.sh /path/to/diffusers [pytest arguments]
# diffusers' test helpers need three packages of their own: pip install parameterized requests-mock torchsde
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
diffusers="$(cd "${1:?give the diffusers checkout}" && pwd)"
shift
mkdir -p "$diffusers/tests/pipelines/iclevr"
touch "$diffusers/tests/pipelines/iclevr/__init__.py"
cp "$repo/tests/diffusers_conformance/pipeline_iclevr_conformance.py" "$diffusers/tests/pipelines/iclevr/test_iclevr.py"
cd "$diffusers"
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" python3 -m pytest tests/pipelines/iclevr/test_iclevr.py -p no:cacheprovider "$@"
