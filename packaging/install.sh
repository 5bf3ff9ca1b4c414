#!/bin/sh
# edgeproxy offline installer: run from the unpacked bundle, as root. No network is used.
#
#   ./install.sh [--root DIR] [--python PYTHON] [--no-start] [--system-site-packages]
#
# What it does (each step is skipped when already done, so it can be re-run at will):
#   1. checks the machine: CPU architecture, CPython version and glibc the bundle was built for;
#   2. installs this release into /opt/edgeproxy/releases/VERSION-COMMIT-DIGEST, a venv made with
#      the node's python3 and filled by pip --no-index --require-hashes from wheels/ only;
#   3. points /opt/edgeproxy/current at it (an atomic rename: an upgrade switches at once and
#      the previous release stays for a rollback), links /usr/local/bin/edgeproxy;
#   4. installs the systemd unit and the docs; creates /etc/edgeproxy (0755, root) and
#      /etc/edgeproxy.yaml (the example configuration) only where they do not exist:
#      configuration, manifests and state are never overwritten;
#   5. where systemd is PID 1 (and --root is /): daemon-reload, enable, and start, or restart
#      when it was running (an upgrade); elsewhere it says what to run.
# --root DIR installs into DIR instead of / (for tests and images); nothing outside it changes.
# --system-site-packages lets the release see the node's Python packages beside its own (the
# bundle's always win): with Debian's python3-systemd installed, log entries then reach the
# journal with their fields (EDGEPROXY_SERVICE=...).
set -eu

ROOT=/
PYTHON=python3
START=1
VENV_OPTS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=$2; shift 2 ;;
    --python) PYTHON=$2; shift 2 ;;
    --no-start) START=0; shift ;;
    --system-site-packages) VENV_OPTS="--system-site-packages"; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { echo "install.sh: $*"; }
die() { echo "install.sh: $*" >&2; exit 1; }

BUNDLE=$(cd "$(dirname "$0")" && pwd)
[ -f "$BUNDLE/BUNDLE.json" ] || die "run me from an unpacked bundle (no BUNDLE.json in $BUNDLE)"
[ "$(id -u)" -eq 0 ] || [ "$ROOT" != / ] || die "must run as root"
command -v "$PYTHON" >/dev/null 2>&1 || die "no $PYTHON on this machine: install CPython first"
ROOT=$(mkdir -p "$ROOT" && cd "$ROOT" && pwd)
R=${ROOT%/}   # "" for /

# --- 1. is this bundle for this machine? ------------------------------------------------------
# shellcheck disable=SC2016
CHECK=$("$PYTHON" - "$BUNDLE/BUNDLE.json" <<'PY'
import json, platform, sys
meta = json.load(open(sys.argv[1]))
problems = []
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
  *) die "this bundle does not fit this machine: $CHECK" ;;
esac
VERSION=$(echo "$CHECK" | cut -d' ' -f2)
COMMIT=$(echo "$CHECK" | cut -d' ' -f3)
DIGEST=$( { cat "$BUNDLE/BUNDLE.json"; echo "$VENV_OPTS"; } | sha256sum | cut -d' ' -f1)
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
  # shellcheck disable=SC2086
  "$PYTHON" -m venv --without-pip $VENV_OPTS "$RELEASE"
  PIP_WHEEL=$(ls "$BUNDLE"/wheels/pip-*.whl)
  # No pip configuration of this machine applies (PIP_CONFIG_FILE=/dev/null, --isolated).
  PIP_CONFIG_FILE=/dev/null "$RELEASE/bin/python" "$PIP_WHEEL/pip" --isolated \
    --disable-pip-version-check install --quiet --no-index --no-cache-dir \
    --no-warn-script-location --find-links "$BUNDLE/wheels" --require-hashes \
    --only-binary=:all: -r "$BUNDLE/requirements.txt" -r "$BUNDLE/pip.txt"
  "$RELEASE/bin/edgeproxy" --version >/dev/null ||
    die "the new release does not run; nothing was switched"
  echo "$DIGEST" > "$RELEASE/.bundle-digest"
fi

# --- 3. switch to it --------------------------------------------------------------------------
PREVIOUS=$(readlink "$PREFIX/current" 2>/dev/null || true)
if [ "$PREVIOUS" != "releases/$RELEASE_NAME" ]; then
  ln -sfn "releases/$RELEASE_NAME" "$PREFIX/current.new"
  mv -T "$PREFIX/current.new" "$PREFIX/current"
  say "current release: $RELEASE_NAME${PREVIOUS:+ (was ${PREVIOUS#releases/})}"
fi
# Keep the running release and the one before it (a rollback is one ln -sfn); drop older.
for old in "$PREFIX"/releases/*; do
  [ -d "$old" ] || continue
  case "releases/${old##*/}" in
    "releases/$RELEASE_NAME"|"$PREVIOUS") ;;
    *) rm -rf "$old"; say "removed old release ${old##*/}" ;;
  esac
done
install -m 0755 "$BUNDLE/uninstall.sh" "$PREFIX/uninstall.sh"
mkdir -p "$R/usr/local/bin"
ln -sfn /opt/edgeproxy/current/bin/edgeproxy "$R/usr/local/bin/edgeproxy"

# --- 4. unit, docs, configuration -------------------------------------------------------------
install -D -m 0644 "$BUNDLE/edgeproxy.service" "$R/etc/systemd/system/edgeproxy.service"
mkdir -p "$R/usr/local/share/doc/edgeproxy"
cp "$BUNDLE"/docs/*.md "$R/usr/local/share/doc/edgeproxy/"
if [ ! -e "$R/etc/edgeproxy" ]; then
  install -d -m 0755 -o 0 -g 0 "$R/etc/edgeproxy"
  say "created $R/etc/edgeproxy (drop Service, Endpoints and EndpointSlice manifests here)"
fi
if [ ! -e "$R/etc/edgeproxy.yaml" ]; then
  install -m 0644 -o 0 -g 0 "$BUNDLE/edgeproxy.yaml" "$R/etc/edgeproxy.yaml"
  say "created $R/etc/edgeproxy.yaml (the example configuration)"
else
  say "kept $R/etc/edgeproxy.yaml"
fi

# --- 5. systemd -------------------------------------------------------------------------------
if [ "$START" = 1 ] && [ "$ROOT" = / ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --quiet edgeproxy.service
  if systemctl is-active --quiet edgeproxy.service; then
    systemctl restart edgeproxy.service
    say "edgeproxy restarted on release $RELEASE_NAME"
  else
    systemctl start edgeproxy.service
    say "edgeproxy started"
  fi
  systemctl --no-pager --lines=0 status edgeproxy.service || true
else
  say "installed; systemd was not asked (not PID 1 here, --root, or --no-start). Run it with:"
  say "  systemctl daemon-reload && systemctl enable --now edgeproxy   (under systemd)"
  say "  /usr/local/bin/edgeproxy run --config /etc/edgeproxy.yaml      (elsewhere)"
fi
