#!/usr/bin/env bash
# Prepares a fresh Debian machine for napari-g3dvit: the Debian packages napari's OpenGL canvas
# needs under Xvfb, then a virtual environment in .venv holding the package (editable) and the
# extras named as arguments (default: testing).
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(xvfb xauth libgl1 libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1
      libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0
      libxcb-cursor0 libdbus-1-3 libfontconfig1 libglib2.0-0)
missing=()
for deb in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "ok installed" || missing+=("$deb")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

extras="${*:-testing}"
extras="${extras// /,}"
[ -x .venv/bin/python ] || python3 -m venv .venv
# A machine-wide find-links folder may hold a CPU-only torch that the registry's torchvision does
# not work with; resolve against the registry as any user's machine would.
echo "setup: installing napari-g3dvit[$extras] into .venv"
env -u PIP_FIND_LINKS .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]"
