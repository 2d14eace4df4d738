#!/usr/bin/env bash
# Install the system packages HOPS needs on Debian 12 / Ubuntu 22.04+ (idempotent; quick
# when everything is already there).  Runs apt-get as root, or through sudo.
#   carbon-cache + whisper + graphite-web (gunicorn) - the Graphite the demo and tests use
#   dcmtk                                            - the foreign DICOM peer in tests
#   gearman-job-server gearman-tools                 - gearmand with its sqlite queue
#   podman runc busybox-static                       - containers for buckets (docker API)
#   orthanc                                          - a real PACS peer in tests (routing destination)
#   chromium chromium-driver                         - headless browser for the web UI test (selenium)
#   python3-venv                                     - the project's virtual environment
set -euo pipefail
PACKAGES=(
  python3 python3-venv python3-pip
  graphite-carbon graphite-web gunicorn
  dcmtk gearman-job-server gearman-tools
  podman runc busybox-static
  orthanc
  chromium chromium-driver
  gcc libc6-dev
  netcat-openbsd
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO=(sudo)
fi
echo "installing system packages: ${missing[*]}"
"${SUDO[@]}" apt-get update -q
# --no-install-recommends: graphite-web would otherwise pull in GTK
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
# Debian starts carbon-cache as a service on install on some releases; HOPS runs its own.
