#!/usr/bin/env bash
# Debian's Chromium for the browser tests (tests/test_app_browser.py): playwright drives /usr/bin/chromium
# through executable_path and never downloads a browser of its own (no `playwright install`).
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version
