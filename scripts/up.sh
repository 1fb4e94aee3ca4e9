#!/usr/bin/env bash
# Sets up everything (scripts/setup.sh) and runs Strato on this machine (`strato up`).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$here/scripts/setup.sh"
exec "$here/.venv/bin/strato" up "$@"
