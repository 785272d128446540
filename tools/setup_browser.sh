#!/usr/bin/env bash
# Installs what the browser test needs when it is missing: Debian's chromium (no browser download
# by playwright). Without root or apt, says so; the browser test then explains how to install it.
set -u
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium for the browser test (apt-get)..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the browser test will fail with instructions"
else
  echo "note: /usr/bin/chromium is missing; install Debian's 'chromium' package for the browser test"
fi
exit 0
