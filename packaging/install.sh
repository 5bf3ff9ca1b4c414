#!/bin/sh
# edgeproxy offline installer: run from the unpacked bundle, as root. No network is used.
#
#   ./install.sh [--root DIR] [--python PYTHON] [--no-start] [--journal-fields]
#
# What it does (each step is skipped when already done, so it can be re-run at will):
#   1. checks the bundle (every file against the sha256 in BUNDLE.json) and the machine (CPU
#      architecture, CPython version and glibc the bundle was built for);
#   2. installs this release into /opt/edgeproxy/releases/VERSION-COMMIT-DIGEST, a venv made
#      with the node's python3 and filled by pip --no-index --require-hashes from wheels/ only;
#   3. points /opt/edgeproxy/current at it (an atomic rename) and /opt/edgeproxy/previous at the
#      release it replaces (a rollback is one rename back); older releases are removed unless a
#      process still runs from one; links /usr/local/bin/edgeproxy;
#   4. installs the systemd unit and the docs; creates /etc/edgeproxy (0755, root) and
#      /etc/edgeproxy.yaml (the example configuration) only where they do not exist:
#      configuration, manifests, state and drop-ins are never touched;
#   5. where systemd is PID 1 (and --root is /): daemon-reload; on a first install enable and
#      start; on an upgrade restart only a running service (one the operator stopped or
#      disabled stays so). Elsewhere it says what to run.
# --root DIR installs into DIR instead of / (for tests and images); nothing outside it changes.
# --journal-fields gives the release the node's python3-systemd (Debian's package, linked in):
#   log entries then reach the journal with their fields (journalctl EDGEPROXY_SERVICE=...).
set -eu

ROOT=/
PYTHON=python3
START=1
JOURNAL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=$2; shift 2 ;;
    --python) PYTHON=$2; shift 2 ;;
    --no-start) START=0; shift ;;
    --journal-fields) JOURNAL=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
               exit 0 ;;
    *) echo "install.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { echo "install.sh: $*"; }
die() { echo "install.sh: $*" >&2; exit 1; }

BUNDLE=$(cd "$(dirname "$0")" && pwd)
[ -f "$BUNDLE/BUNDLE.json" ] || die "run me from an unpacked bundle (no BUNDLE.json in $BUNDLE)"
command -v "$PYTHON" >/dev/null 2>&1 || die "no $PYTHON on this machine: install CPython first"
ROOT=$(mkdir -p "$ROOT" && cd "$ROOT" && pwd)
R=${ROOT%/}   # "" for /
[ "$(id -u)" -eq 0 ] || [ -n "$R" ] || die "must run as root"
# Ownership of what we create: root's, unless a non-root user installs into a scratch tree.
OWNER=""
[ "$(id -u)" -eq 0 ] && OWNER="-o 0 -g 0"

# --- 1. is this bundle whole, and for this machine? -------------------------------------------
CHECK=$("$PYTHON" - "$BUNDLE" <<'PY'
import hashlib, json, platform, sys
from pathlib import Path
bundle = Path(sys.argv[1])
meta = json.loads((bundle / "BUNDLE.json").read_text())
problems = []
for name, digest in meta["files"].items():
    path = bundle / name
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
        problems.append(f"{name} is missing or damaged (sha256 differs from BUNDLE.json)")
        break
if platform.machine() != meta["arch"]:
    problems.append(f"bundle for {meta['arch']}, this machine is {platform.machine()}")
here = "%d.%d" % sys.version_info[:2]
if sys.implementation.name != "cpython" or here != meta["python"]:
    problems.append(f"bundle for CPython {meta['python']}, {sys.executable} is "
                    f"{sys.implementation.name} {here}")
libc, version = platform.libc_ver()
need = tuple(int(x) for x in meta["glibc"].split("."))
if libc != "glibc" or tuple(int(x) for x in version.split(".")[:2]) < need:
    problems.append(f"needs glibc {meta['glibc']} or newer, found {libc or 'none'} {version}")
print("; ".join(problems) if problems else f"ok {meta['version']} {meta['commit']}")
PY
) || die "cannot run $PYTHON"
case "$CHECK" in
  ok\ *) ;;
  *) die "this bundle cannot be installed here: $CHECK" ;;
esac
VERSION=$(echo "$CHECK" | cut -d' ' -f2)
COMMIT=$(echo "$CHECK" | cut -d' ' -f3)
DIGEST=$( { cat "$BUNDLE/BUNDLE.json"; echo "journal=$JOURNAL"; } | sha256sum | cut -d' ' -f1)
# One directory per bundle (its BUNDLE.json lists the digest of every file): a release that
# is installed is never rebuilt in place under a running daemon.
RELEASE_NAME="$VERSION-$(echo "$COMMIT" | cut -c1-12)-$(echo "$DIGEST" | cut -c1-8)"

PREFIX="$R/opt/edgeproxy"
RELEASE="$PREFIX/releases/$RELEASE_NAME"

# --- 2. the release's venv --------------------------------------------------------------------
# Built where it will live (a venv's scripts name its path); .bundle-digest, written last, marks
# it complete. "current" switches to it only then, so a failed or interrupted install leaves
# the running release as it was.
if [ "$(cat "$RELEASE/.bundle-digest" 2>/dev/null || true)" = "$DIGEST" ]; then
  say "release $RELEASE_NAME already installed"
else
  say "installing release $RELEASE_NAME into $RELEASE"
  rm -rf "$RELEASE"
  mkdir -p "$PREFIX/releases"
  # --without-pip: Debian's python3 has no ensurepip unless python3-venv is installed; pip
  # comes from the bundle, run straight from its wheel.
  "$PYTHON" -m venv --without-pip "$RELEASE"
  PIP_WHEEL=$(ls "$BUNDLE"/wheels/pip-*.whl)
  # No pip configuration of this machine applies (PIP_CONFIG_FILE=/dev/null, --isolated).
  PIP_CONFIG_FILE=/dev/null "$RELEASE/bin/python" "$PIP_WHEEL/pip" --isolated \
    --disable-pip-version-check install --quiet --no-index --no-cache-dir \
    --no-warn-script-location --find-links "$BUNDLE/wheels" --require-hashes \
    --only-binary=:all: -r "$BUNDLE/requirements.txt" -r "$BUNDLE/pip.txt"
  if [ "$JOURNAL" = 1 ]; then
    # Only the systemd package of the node's Python, not its whole site: everything else the
    # release imports stays what the bundle pinned.
    SYSTEMD_PKG=$("$PYTHON" -c 'import os, systemd.journal; print(os.path.dirname(systemd.__file__))' \
                  2>/dev/null) || die "--journal-fields: the node has no python3-systemd (apt install python3-systemd)"
    SITE=$("$RELEASE/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    ln -s "$SYSTEMD_PKG" "$SITE/systemd"
  fi
  "$RELEASE/bin/edgeproxy" --version >/dev/null ||
    die "the new release does not run; nothing was switched"
  echo "$DIGEST" > "$RELEASE/.bundle-digest"
fi

# --- 3. switch to it --------------------------------------------------------------------------
CURRENT=$(readlink "$PREFIX/current" 2>/dev/null || true)
if [ "$CURRENT" != "releases/$RELEASE_NAME" ]; then
  if [ -n "$CURRENT" ]; then
    ln -sfn "$CURRENT" "$PREFIX/previous.new"
    mv -T "$PREFIX/previous.new" "$PREFIX/previous"
  fi
  ln -sfn "releases/$RELEASE_NAME" "$PREFIX/current.new"
  mv -T "$PREFIX/current.new" "$PREFIX/current"
  say "current release: $RELEASE_NAME${CURRENT:+ (previous: ${CURRENT#releases/})}"
fi
PREVIOUS=$(readlink "$PREFIX/previous" 2>/dev/null || true)
# Keep the current release and the previous one; drop older ones, but never one a process
# still runs from (an upgrade with --no-start leaves the daemon on its old release).
in_use() { grep -qlF "$1/" /proc/[0-9]*/cmdline 2>/dev/null; }
for old in "$PREFIX"/releases/*; do
  [ -d "$old" ] || continue
  case "releases/${old##*/}" in
    "releases/$RELEASE_NAME"|"$PREVIOUS") ;;
    *) if in_use "$old"; then say "kept old release ${old##*/}: a process runs from it"
       else rm -rf "$old"; say "removed old release ${old##*/}"; fi ;;
  esac
done
# shellcheck disable=SC2086
install -m 0755 $OWNER "$BUNDLE/uninstall.sh" "$PREFIX/uninstall.sh"
mkdir -p "$R/usr/local/bin"
ln -sfn /opt/edgeproxy/current/bin/edgeproxy "$R/usr/local/bin/edgeproxy"

# --- 4. unit, docs, configuration -------------------------------------------------------------
FIRST_INSTALL=0
[ -e "$R/etc/systemd/system/edgeproxy.service" ] || FIRST_INSTALL=1
# shellcheck disable=SC2086
install -D -m 0644 $OWNER "$BUNDLE/edgeproxy.service" "$R/etc/systemd/system/edgeproxy.service"
mkdir -p "$R/usr/local/share/doc/edgeproxy"
cp "$BUNDLE"/docs/*.md "$R/usr/local/share/doc/edgeproxy/"
if [ ! -e "$R/etc/edgeproxy" ]; then
  # shellcheck disable=SC2086
  install -d -m 0755 $OWNER "$R/etc/edgeproxy"
  say "created $R/etc/edgeproxy (drop Service, Endpoints and EndpointSlice manifests here)"
fi
if [ ! -e "$R/etc/edgeproxy.yaml" ]; then
  # shellcheck disable=SC2086
  install -m 0644 $OWNER "$BUNDLE/edgeproxy.yaml" "$R/etc/edgeproxy.yaml"
  say "created $R/etc/edgeproxy.yaml (the example configuration)"
else
  say "kept $R/etc/edgeproxy.yaml"
fi

# --- 5. systemd -------------------------------------------------------------------------------
if [ "$START" = 1 ] && [ -z "$R" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  if [ "$FIRST_INSTALL" = 1 ]; then
    systemctl enable --quiet edgeproxy.service
    systemctl start edgeproxy.service
    say "edgeproxy started"
  elif systemctl is-active --quiet edgeproxy.service; then
    systemctl restart edgeproxy.service
    say "edgeproxy restarted on release $RELEASE_NAME"
  else
    say "edgeproxy is not running (stopped or disabled by an operator): left so"
  fi
  systemctl --no-pager --lines=0 status edgeproxy.service || true
else
  say "installed; systemd was not asked (not PID 1 here, --root, or --no-start). Run it with:"
  say "  systemctl daemon-reload && systemctl enable --now edgeproxy   (under systemd)"
  say "  /usr/local/bin/edgeproxy run --config /etc/edgeproxy.yaml      (elsewhere)"
fi
