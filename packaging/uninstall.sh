#!/bin/sh
# edgeproxy uninstaller (also kept as /opt/edgeproxy/uninstall.sh by install.sh).
#
#   uninstall.sh [--root DIR] [--purge] [--keep-rules]
#
# Stops and disables the service where systemd is PID 1, removes edgeproxy's rules from every
# iptables/nftables backend (`edgeproxy cleanup`; the daemon removes them when it stops, this
# also covers one that was killed), then the unit, the link, the docs and /opt/edgeproxy.
# Manifests (/etc/edgeproxy) and configuration (/etc/edgeproxy.yaml) are kept unless --purge.
set -eu

ROOT=/
PURGE=0
CLEANUP=1
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=$2; shift 2 ;;
    --purge) PURGE=1; shift ;;
    --keep-rules) CLEANUP=0; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "uninstall.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
say() { echo "uninstall.sh: $*"; }
[ "$(id -u)" -eq 0 ] || [ "$ROOT" != / ] || { echo "uninstall.sh: must run as root" >&2; exit 1; }
ROOT=$(cd "$ROOT" && pwd)
R=${ROOT%/}
status=0

if [ "$ROOT" = / ] && [ -d /run/systemd/system ] && [ -e /etc/systemd/system/edgeproxy.service ]; then
  systemctl disable --now --quiet edgeproxy.service || status=1
  say "stopped and disabled edgeproxy.service"
fi
if [ "$CLEANUP" = 1 ] && [ -x "$R/opt/edgeproxy/current/bin/edgeproxy" ]; then
  # The node's own rules: only where the node is this root (--root / or a namespace the
  # caller chose); with --root elsewhere it cleans the caller's network namespace.
  "$R/opt/edgeproxy/current/bin/edgeproxy" cleanup || status=1
fi
rm -f "$R/etc/systemd/system/edgeproxy.service"
rm -rf "$R/etc/systemd/system/edgeproxy.service.d"
if [ "$ROOT" = / ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || status=1
fi
case "$(readlink "$R/usr/local/bin/edgeproxy" 2>/dev/null || true)" in
  /opt/edgeproxy/*) rm -f "$R/usr/local/bin/edgeproxy" ;;
esac
rm -rf "$R/usr/local/share/doc/edgeproxy" "$R/opt/edgeproxy" "$R/run/edgeproxy"
say "removed the program, the unit and the docs"
if [ "$PURGE" = 1 ]; then
  rm -rf "$R/etc/edgeproxy" "$R/etc/edgeproxy.yaml"
  say "removed $R/etc/edgeproxy and $R/etc/edgeproxy.yaml (--purge)"
else
  say "kept $R/etc/edgeproxy and $R/etc/edgeproxy.yaml (--purge removes them)"
fi
exit $status
