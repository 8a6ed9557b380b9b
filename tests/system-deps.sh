#!/bin/sh
# What the test suite needs from the system, installed from Debian's packages when
# missing: chromium (browser tests, driven by Playwright; never a downloaded build),
# systemd-analyze (the unit is verified), and unshare, ip and nft for the network
# lab (sim/netlab.py: namespaces on a bridge, nftables for loss and partitions), and libisal2
# (ISA-L, the erasure code's fast backend). Installing needs root; without it the
# script names what is missing and fails, because a test is never skipped for it.
set -eu
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"
command -v unshare >/dev/null 2>&1 || missing="$missing util-linux"
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
command -v nft >/dev/null 2>&1 || missing="$missing nftables"
# ISA-L: the drive's erasure code runs on it where the machine has it, and the tests hold it to the numpy path
{ ldconfig -p || /sbin/ldconfig -p; } 2>/dev/null | grep -q 'libisal\.so\.2 ' || missing="$missing libisal2"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "tests need:$missing (Debian packages); install them as root: apt-get install$missing" >&2
    exit 1
fi
echo "installing$missing from Debian's packages" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq $missing >/dev/null
