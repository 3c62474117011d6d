#!/usr/bin/env bash
# Installs Debian's eSpeak NG (the speech synthesiser of chapter 9), if it is not there yet.
# vlmlib.speech runs the `espeak-ng` program; nothing is downloaded at run time.
set -euo pipefail
if command -v espeak-ng >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
  echo "eSpeak NG is missing and this user cannot install it: run 'apt-get install espeak-ng' as root." >&2
  echo "Chapter 9's notebook and tests/test_speech.py need it and fail without it." >&2
  exit 0
fi
echo "Installing Debian's espeak-ng for chapter 9 (speech)..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends espeak-ng >/dev/null
espeak-ng --version
