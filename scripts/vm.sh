#!/usr/bin/env bash
# VM tier harness: boots one of Debian's own kernels under qemu TCG (no KVM on the CI machines) with the
# host's / shared read-only over 9p, chroots into it and runs a command. This is where BPF rewrites are
# proven, because the development kernel runs with lockdown=integrity (no bpf_probe_write_user) while
# Debian's kernels run without lockdown. See DESIGN.md section 6.
#
# usage: scripts/vm.sh [--kernel bookworm|trixie] [--cache DIR] [--timeout SECS] [--share DIR]
#                      [--module NAME]... [--env NAME=VALUE]... [--cpu MODEL] -- GUEST_COMMAND...
#        scripts/vm.sh --fetch-only [--kernel bookworm|trixie] [--cache DIR]
#
#   --kernel    Debian suite whose linux-image-*-amd64-unsigned is booted (default bookworm).
#   --cache     where that suite's kernel is kept (default ${KLOAK_CACHE:-/var/cache/kloak-ci}/kernels/<suite>);
#               downloaded on first use, then reused.
#   --timeout   wall-clock limit for the whole VM run (default 900 s).
#   --share     writable directory shared with the guest at the same path (default: a fresh
#               /var/tmp/kloak-vm/<run-id>); the guest's console is saved there as vm-console.log and the
#               command's exit code as vm-exit-code.
#   --module    an extra kernel module to load if the package has it (repeatable).
#   --env       an environment variable for the guest command (repeatable); PATH is always passed.
#   --cpu       qemu CPU model (default: qemu's own, qemu64, without SSE4.2 or AVX); `max` gives the
#               guest every feature TCG emulates, which Bun's builds need.
#   GUEST_COMMAND  argv to run; a single argument is run as a bash snippet (`-- 'uname -r; ls /'`).
#               It runs as root in the caller's current directory, stdin is /dev/null.
#
# Guest: 3 GiB, 2 vCPUs, no network device (only lo, up, with 127.0.0.1 and 127.0.0.2). / is the host's
# root, read-only (9p, cache=loose); private /tmp, /run, /dev/shm; fresh proc, sysfs, devtmpfs, tracefs
# (/sys/kernel/tracing), bpffs (/sys/fs/bpf), securityfs, debugfs and a pure cgroup2 at /sys/fs/cgroup.
# Modules: virtio_pci, 9p, 9pnet_virtio and their dependencies (resolved with modinfo), plus veth,
# sch_netem, sch_prio, sch_ingress, cls_bpf when present. The command sees KLOAK_VM=1, KLOAK_VM_KERNEL, KLOAK_VM_SHARE.
# Kernel and initramfs messages, then the command's output, are streamed to stdout.
#
# Exit code: the guest command's own exit code; 2 when the guest never reached the command (the last
# console lines are printed); 124 when the command started but did not finish within --timeout;
# 64 for usage errors.
set -euo pipefail

die() { echo "vm: $*" >&2; exit 64; }

suite=bookworm
cache=
timeout_s=900
share=
fetch_only=0
extra_modules=()
cpu_args=()
guest_env=()
while [ $# -gt 0 ]; do
  case $1 in
    --kernel) suite=${2:?--kernel needs a value}; shift 2 ;;
    --cache) cache=${2:?--cache needs a value}; shift 2 ;;
    --timeout) timeout_s=${2:?--timeout needs a value}; shift 2 ;;
    --share) share=${2:?--share needs a value}; shift 2 ;;
    --module) extra_modules+=("${2:?--module needs a value}"); shift 2 ;;
    --env) guest_env+=("${2:?--env needs a value}"); shift 2 ;;
    --cpu) cpu_args=(-cpu "${2:?--cpu needs a value}"); shift 2 ;;
    --fetch-only) fetch_only=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (guest command goes after --)" ;;
  esac
done
case $suite in bookworm|trixie) ;; *) die "--kernel must be bookworm or trixie" ;; esac
case $timeout_s in ''|*[!0-9]*) die "--timeout must be a number of seconds" ;; esac
[ "$fetch_only" = 1 ] || [ $# -gt 0 ] || die "no guest command (usage: vm.sh [options] -- COMMAND...)"
[ "$(id -u)" -eq 0 ] || die "needs root (apt-get, 9p export of /)"
cache=${cache:-${KLOAK_CACHE:-/var/cache/kloak-ci}/kernels/$suite}

# ---------------------------------------------------------------------------------------------------------
# Host tools. Installed on demand so a fresh Debian/Ubuntu machine works.
# shellcheck source=scripts/lib/apt.sh
. "$(dirname "$0")/lib/apt.sh"
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
# The initramfs has no libc, so the busybox must be the static build, not Debian's dynamic `busybox`.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || missing+=(busybox-static)
command -v cpio >/dev/null || missing+=(cpio)
command -v xz >/dev/null || missing+=(xz-utils)
command -v zstd >/dev/null || missing+=(zstd)
command -v modinfo >/dev/null || missing+=(kmod)
command -v dpkg-deb >/dev/null || missing+=(dpkg)
command -v flock >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  echo "vm: installing ${missing[*]}" >&2
  apt_install "${missing[@]}"
fi
busybox=$(dpkg -L busybox-static | grep -E '/s?bin/busybox$' | head -1)
[ -x "$busybox" ] || die "busybox-static installed but its binary was not found"

# ---------------------------------------------------------------------------------------------------------
# Kernel cache: <cache>/<kver>/ holds the extracted package (boot/vmlinuz-*, (usr/)lib/modules/<kver>),
# <cache>/current names the version. Filled under an flock so concurrent first runs download once, and
# extracted into a temporary directory renamed at the end so an interrupted fetch never looks complete.
apt_opts=()
kernel_pkg_candidates() { # prints the unsigned package name, then the signed one as a fallback
  local dep
  dep=$(apt-cache "${apt_opts[@]}" depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/{print $2; exit}') || true
  [ -n "$dep" ] || return 1
  echo "${dep}-unsigned"
  echo "$dep"
}

fetch_kernel() {
  local work=$1 pkgs pkg
  if [ "$suite" = trixie ]; then
    # A private apt state inside the kernel cache, so the host's apt state is not changed.
    suite_apt "$cache/.apt" trixie || return 1
  fi
  if ! pkgs=$(kernel_pkg_candidates); then
    [ "$suite" = bookworm ] || return 1
    apt-get update -q >/dev/null 2>&1 || true
    pkgs=$(kernel_pkg_candidates) || { echo "vm: no linux-image-amd64 in the apt lists" >&2; return 1; }
  fi
  for pkg in $pkgs; do
    echo "vm: downloading $pkg ($suite)" >&2
    suite_download "$work" "$pkg" 2>/dev/null && break
  done
  compgen -G "$work/*.deb" >/dev/null || { echo "vm: download of $pkgs failed" >&2; return 1; }
  dpkg-deb -x "$work"/*.deb "$work/x"
  rm -f "$work"/*.deb
}

mkdir -p "$cache"
{
  flock -w 1800 9 || die "timed out waiting for the cache lock on $cache"
  [ -e "$cache/suite" ] || echo "$suite" > "$cache/suite"
  [ "$(cat "$cache/suite")" = "$suite" ] || die "$cache holds a $(cat "$cache/suite") kernel, not $suite"
  if ! { [ -s "$cache/current" ] && [ -d "$cache/$(cat "$cache/current")" ]; }; then
    work=$(mktemp -d "$cache/.fetch.XXXXXX")
    if ! fetch_kernel "$work"; then rm -rf "$work"; echo "vm: kernel fetch failed" >&2; exit 2; fi
    vmlinuz=$(compgen -G "$work/x/boot/vmlinuz-*" | head -1)
    kv=${vmlinuz##*/vmlinuz-}
    rm -rf "${cache:?}/$kv"
    mv "$work/x" "$cache/$kv"
    rm -rf "$work"
    echo "$kv" > "$cache/current"
  fi
} 9>"$cache/.lock"
kver=$(cat "$cache/current")
kdir=$cache/$kver
kernel=$kdir/boot/vmlinuz-$kver
moddir=$kdir/usr/lib/modules/$kver          # trixie: merged /usr
[ -d "$moddir" ] || moddir=$kdir/lib/modules/$kver
if [ ! -f "$kernel" ] || [ ! -d "$moddir" ]; then echo "vm: broken cache $kdir (remove it)" >&2; exit 2; fi
if [ "$fetch_only" = 1 ]; then
  echo "vm: $suite kernel $kver cached in $kdir"
  exit 0
fi

# ---------------------------------------------------------------------------------------------------------
# Where the guest command runs. The guest sees the host's / except where it mounts its own filesystems.
cwd=$(pwd -P)
case $cwd/ in
  /tmp/*|/proc/*|/sys/*|/dev/*|/run/*)
    die "current directory $cwd is not visible in the guest (it mounts its own /tmp, /proc, /sys, /dev, /run)" ;;
esac
if [ -z "$share" ]; then
  mkdir -p /var/tmp/kloak-vm
  share=$(mktemp -d "/var/tmp/kloak-vm/$(date +%Y%m%d-%H%M%S).XXXXXX")
fi
mkdir -p "$share"
share=$(cd "$share" && pwd -P)
case $share/ in
  /tmp/*|/proc/*|/sys/*|/dev/*|/run/*|/) die "--share $share must be a directory visible in the guest" ;;
esac
# The path is written into the busybox /init unquoted: keep it to plain characters.
case $share in *[!A-Za-z0-9._/+,@=-]*) die "--share path must use only [A-Za-z0-9._/+,@=-]" ;; esac
rm -f "$share/vm-exit-code" "$share/vm-started" "$share/vm-console.log" "$share/.vm-run.sh"

# ---------------------------------------------------------------------------------------------------------
# Initramfs: static busybox, the modules in dependency order, and an /init that mounts everything and
# chroots. Built per run in a private temporary directory (host-only, so /tmp is fine here) so that
# concurrent runs never share files.
ir=$(mktemp -d "${TMPDIR:-/tmp}/kloak-vm-initrd.XXXXXX")
qemu_pidfile=$ir/qemu.pid
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  if [ -s "$qemu_pidfile" ]; then kill "$(cat "$qemu_pidfile")" 2>/dev/null || true; fi
  rm -rf "$ir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$ir/bin" "$ir/mods" "$ir/proc" "$ir/sys" "$ir/dev" "$ir/host"
cp "$busybox" "$ir/bin/busybox"

# Module files by module name (file names may use '-' where the module name has '_').
declare -A modfile=() builtin=() state=()
while IFS= read -r f; do
  n=${f##*/}; n=${n%%.ko*}; modfile[${n//-/_}]=$f
done < <(find "$moddir" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')
if [ -f "$moddir/modules.builtin" ]; then
  while IFS= read -r f; do
    n=${f##*/}; n=${n%.ko}; builtin[${n//-/_}]=1
  done < "$moddir/modules.builtin"
fi
order=()
# add_module NAME: decompresses NAME into the initramfs and appends it to $order after its dependencies,
# read with `modinfo -F depends` (the dependency graph changes between kernel builds). Returns 1 if the
# module is neither a file nor built in.
add_module() {
  local m=${1//-/_} f dep deps
  case ${state[$m]:-} in loaded) return 0 ;; busy) return 0 ;; esac  # busy: cycle guard
  if [ -z "${modfile[$m]:-}" ]; then
    [ -n "${builtin[$m]:-}" ] && { state[$m]=loaded; return 0; }
    return 1
  fi
  state[$m]=busy
  f=${modfile[$m]}
  case $f in
    *.ko.xz) xz -dc "$f" > "$ir/mods/$m.ko" ;;
    *.ko.zst) zstd -qdc "$f" > "$ir/mods/$m.ko" ;;
    *.ko.gz) gzip -dc "$f" > "$ir/mods/$m.ko" ;;
    *) cp "$f" "$ir/mods/$m.ko" ;;
  esac
  deps=$(modinfo -F depends "$ir/mods/$m.ko")
  for dep in ${deps//,/ }; do
    add_module "$dep" || { echo "vm: $m needs $dep, which $kver does not have" >&2; return 1; }
  done
  state[$m]=loaded
  order+=("$m")
}
for m in virtio_pci 9p 9pnet_virtio; do
  add_module "$m" || { echo "vm: required module $m missing from $kver" >&2; exit 2; }
done
# sch_ingress (clsact) and cls_bpf: the ciphertext strategy's tc filters; tun: ciphertext.sh's layer-3 link.
for m in veth sch_netem sch_prio sch_ingress cls_bpf tun "${extra_modules[@]}"; do
  add_module "$m" || echo "vm: optional module $m not in $kver, skipped" >&2
done

# pyenv's shims are bash scripts that fork a dozen times per call: about 30 s per `python3` under TCG. Put
# the interpreter they resolve to first on the guest's PATH so `python3` means the same Python, fast.
guest_path=$PATH
case ":$PATH:" in
  */shims:*)
    if pybin=$(python3 -c 'import os, sys; print(os.path.dirname(sys.executable))' 2>/dev/null); then
      guest_path=$pybin:$PATH
    fi ;;
esac

# The command script runs in the chroot under the host's bash. Everything caller-controlled is quoted
# with printf %q here, so no quoting survives into the busybox /init. Single-quoted printf formats below are
# guest-side code on purpose.
# shellcheck disable=SC2016
{
  echo '#!/bin/bash'
  printf 'export PATH=%q HOME=/root LANG=C.UTF-8\n' "$guest_path"
  printf 'export KLOAK_VM=1 KLOAK_VM_KERNEL=%q KLOAK_VM_SHARE=%q\n' "$kver" "$share"
  for e in "${guest_env[@]}"; do
    case $e in *=*) printf 'export %q=%q\n' "${e%%=*}" "${e#*=}" ;; *) die "--env needs NAME=VALUE" ;; esac
  done
  printf 'cd %q || exit 2\n' "$cwd"
  printf 'echo "vm-guest: started kernel $(uname -r)"; : > %q\n' "$share/vm-started"
  if [ $# -eq 1 ]; then
    printf 'bash -c %q </dev/null\n' "$1"
  else
    printf '%q ' "$@"; printf '</dev/null\n'
  fi
  printf 'rc=$?\necho "$rc" > %q\nsync\nexit "$rc"\n' "$share/vm-exit-code"
} > "$share/.vm-run.sh"

cat > "$ir/init" <<EOF
#!/bin/busybox sh
# Generated by scripts/vm.sh: guest PID 1.
/bin/busybox --install -s /bin
export PATH=/bin
echo  # the firmware's last line has no newline; keep our first line separate
fail() { echo "vm-guest: boot failed: \$*"; poweroff -f; }
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in ${order[*]}; do
  [ -e /sys/module/\$m ] || insmod /mods/\$m.ko || echo "vm-guest: insmod \$m failed"
done
# cache=loose: the root is read-only to the guest, so caching pages and metadata is safe within one run and
# makes repeated program starts ~10x faster (files the host changes during a run may look stale).
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose hostroot /host || fail "9p root"
H=/host
# The guest's own kernel filesystems replace the host's views; /tmp and /run are private tmpfs (the root
# is read-only and /tmp is where tools write).
mount -t proc proc \$H/proc
mount -t sysfs sys \$H/sys
mount -t devtmpfs dev \$H/dev
mkdir -p \$H/dev/pts \$H/dev/shm
mount -t devpts devpts \$H/dev/pts
mount -t tmpfs shm \$H/dev/shm
mount -t tmpfs tmp \$H/tmp || fail "tmpfs /tmp"
chmod 1777 \$H/tmp
mount -t tmpfs run \$H/run
mount -t tracefs tracefs \$H/sys/kernel/tracing || echo "vm-guest: no tracefs"
mount -t debugfs debugfs \$H/sys/kernel/debug 2>/dev/null || true
mount -t bpf bpf \$H/sys/fs/bpf || echo "vm-guest: no bpffs"
mount -t securityfs securityfs \$H/sys/kernel/security || echo "vm-guest: no securityfs"
# A fresh sysfs has an empty /sys/fs/cgroup: mount a pure cgroup2 hierarchy there, whatever the host uses.
mount -t cgroup2 cgroup2 \$H/sys/fs/cgroup || echo "vm-guest: no cgroup2"
# Only lo. 127.0.0.0/8 is routed locally once lo is up, so 127.0.0.2.. need no addresses for routing; but
# glibc's getaddrinfo(AI_ADDRCONFIG) (getent ahosts, many clients) returns nothing unless some IPv4 address
# other than 127.0.0.1 exists, so add one.
ip link set lo up
ip addr add 127.0.0.2/8 dev lo
mount -t 9p -o trans=virtio,version=9p2000.L,rw,msize=524288 share \$H$share || fail "9p share"
echo "vm-guest: mounts ready"
chroot \$H /bin/bash $share/.vm-run.sh
sync
umount \$H$share 2>/dev/null
poweroff -f
EOF
chmod +x "$ir/init"
(cd "$ir" && find . -path ./qemu.pid -prune -o -print | cpio -o -H newc --quiet | gzip -1 > "$ir/initrd.gz")

# ---------------------------------------------------------------------------------------------------------
# Boot. qemu's exit code says nothing about the guest, so the result comes from the share. The console is
# streamed with \r and terminal escapes stripped, and saved for the failure report.
log=$share/vm-console.log
start=$EPOCHREALTIME
set +e
timeout -k 10 "$timeout_s" qemu-system-x86_64 -accel tcg "${cpu_args[@]}" -m 3072 -smp 2 \
  -nographic -no-reboot -nic none -pidfile "$qemu_pidfile" \
  -kernel "$kernel" -initrd "$ir/initrd.gz" \
  -append "console=ttyS0 quiet panic=-1" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs "local,path=$share,mount_tag=share,security_model=none" </dev/null 2>&1 |
  sed -u -e 's/\r//g' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1bc//g' |
  while IFS= read -r line || [ -n "$line" ]; do
    printf '%s\n' "$line" >> "$log"
    case $line in
      *SeaBIOS*|*iPXE*|'Booting from'*|'') continue ;;
      'vm-guest: started kernel '*)
        now=$EPOCHREALTIME
        printf 'vm: kernel %s booted in %ss\n' "${line#vm-guest: started kernel }" \
          "$(awk -v a="$start" -v b="$now" 'BEGIN { printf "%.1f", b - a }')" ;;
      *) printf '%s\n' "$line" ;;
    esac
  done
status=("${PIPESTATUS[@]}")
set -e

if [ -s "$share/vm-exit-code" ]; then
  rc=$(cat "$share/vm-exit-code")
  echo "vm: guest command exited $rc (console: $log)"
  exit "$rc"
fi
if [ -e "$share/vm-started" ]; then
  echo "vm: guest command did not finish (qemu/timeout status ${status[0]}, limit ${timeout_s}s); last console lines:" >&2
  tail -n 20 "$log" >&2 || true
  exit 124
fi
echo "vm: guest never reached the command (qemu/timeout status ${status[0]}); last console lines:" >&2
tail -n 30 "$log" >&2 || true
exit 2
