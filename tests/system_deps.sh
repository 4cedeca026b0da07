#!/usr/bin/env bash
# Install the Debian packages that the tests' real peers need, only when missing.
# Called by `make test` and so by .ci/run; safe to run again.
set -euo pipefail
# command-or-file  debian-package
NEEDS=(
  "storescu dcmtk"
  "/usr/sbin/Orthanc orthanc"
  "/usr/share/orthanc/plugins/libOrthancDicomWeb.so orthanc-dicomweb"
  "/usr/bin/chromium chromium"
  "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc fonts-noto-cjk"
)
missing=()
for entry in "${NEEDS[@]}"; do
  probe=${entry%% *}; pkg=${entry##* }
  if [[ $probe == /* ]]; then [[ -e $probe ]] || missing+=("$pkg")
  else command -v "$probe" >/dev/null 2>&1 || missing+=("$pkg"); fi
done
if ((${#missing[@]})); then
  echo "installing system packages for the tests: ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
