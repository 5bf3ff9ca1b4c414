#!/bin/sh
# edgeproxy uninstaller (also kept as /opt/edgeproxy/uninstall.sh by install.sh).
#
#   uninstall.sh [--root DIR] [--purge] [--keep-rules] [--cleanup]
#
# Stops and disables the service where systemd is PID 1, removes edgeproxy's rules from every
# iptables/nftables backend and its listen interface (`edgeproxy cleanup`; the daemon removes
# them when it stops, this also covers one that was killed), then the unit, the link, the docs
# and /opt/edgeproxy. Manifests (/etc/edgeproxy), the configuration (/etc/edgeproxy.yaml) and
# the operator's drop-ins (/etc/systemd/system/edgeproxy.service.d) are kept unless --purge.
# With --root DIR only files under DIR are touched: the rules and interface of the network
# this runs in are cleaned only with --cleanup (a test in a namespace of its own).
set -eu

ROOT=/
PURGE=0
CLEANUP=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=$2; shift 2 ;;
    --purge) PURGE=1; shift ;;
    --keep-rules) CLEANUP=no; shift ;;
    --cleanup) CLEANUP=yes; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
               exit 0 ;;
    *) echo "uninstall.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
say() { echo "uninstall.sh: $*"; }
ROOT=$(cd "$ROOT" && pwd)
R=${ROOT%/}
[ "$(id -u)" -eq 0 ] || [ -n "$R" ] || { echo "uninstall.sh: must run as root" >&2; exit 1; }
[ "$CLEANUP" = auto ] && { [ -z "$R" ] && CLEANUP=yes || CLEANUP=no; }
status=0

if [ -z "$R" ] && [ -d /run/systemd/system ] && [ -e /etc/systemd/system/edgeproxy.service ]; then
  systemctl disable --now --quiet edgeproxy.service || status=1
  say "stopped and disabled edgeproxy.service"
fi
if [ "$CLEANUP" = yes ] && [ -x "$R/opt/edgeproxy/current/bin/edgeproxy" ]; then
  if [ -f "$R/etc/edgeproxy.yaml" ]; then  # its listenInterface and stateDir, if changed
    "$R/opt/edgeproxy/current/bin/edgeproxy" cleanup --config "$R/etc/edgeproxy.yaml" || status=1
  else
    "$R/opt/edgeproxy/current/bin/edgeproxy" cleanup || status=1
  fi
fi
rm -f "$R/etc/systemd/system/edgeproxy.service"
if [ -z "$R" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || status=1
fi
case "$(readlink "$R/usr/local/bin/edgeproxy" 2>/dev/null || true)" in
  /opt/edgeproxy/*) rm -f "$R/usr/local/bin/edgeproxy" ;;
esac
rm -rf "$R/usr/local/share/doc/edgeproxy" "$R/opt/edgeproxy" "$R/run/edgeproxy"
say "removed the program, the unit and the docs"
if [ "$PURGE" = 1 ]; then
  rm -rf "$R/etc/edgeproxy" "$R/etc/edgeproxy.yaml" "$R/etc/systemd/system/edgeproxy.service.d"
  say "removed $R/etc/edgeproxy, $R/etc/edgeproxy.yaml and the unit's drop-ins (--purge)"
else
  say "kept $R/etc/edgeproxy, $R/etc/edgeproxy.yaml and any drop-ins (--purge removes them)"
fi
exit $status
