#!/usr/bin/env bash
# The host matrix of the README, rerun in one command (as root, on a Debian-like machine with
# debootstrap, qemu-system-x86 and qemu-utils):
#
#     tests/hosts/run.sh [bookworm] [trixie]          # default: both
#
# For each Debian release: a VM image made from Debian's packages only (debootstrap, then the
# kernel, systemd, AppArmor, LXC and the README's packages; cached), booted with NO network
# device, a copy of this checkout (tracked and untracked files, not ignored ones) and the
# wheels pip needs carried in over a 9p share, tests/hosts/guest.sh run in it (the README's
# two commands, then the suite per folder), its results copied back and summarized.
# Not part of CI: under software emulation a VM boots in about a minute and runs several
# times slower than the machine.
#
#   HOSTS_CACHE=/var/tmp/lxcbind-hosts   images, wheels, results (results/<release>-<time>/)
#   HOSTS_MIRROR=http://deb.debian.org/debian
#   HOSTS_MEM=6144  HOSTS_CPUS=2         guest RAM (MiB; the default memory limit is half) and vCPUs
#   HOSTS_ACCEL=kvm|tcg                  default: kvm when /dev/kvm exists; use tcg where KVM
#                                        cannot boot a stock Debian kernel
#   HOSTS_TIMEOUT=10800                  seconds per VM; qemu is killed after that
#   HOSTS_TESTS, HOSTS_BUDGET, HOSTS_LINT, HOSTS_BENCH  passed to guest.sh (see there); e.g.
#       HOSTS_BENCH="python3 benchmarks/bench_floor.py --cpu -n 20" tests/hosts/run.sh bookworm
#   runs that benchmark in the VM instead of the suite (its output: share/out/bench.txt)
#   HOSTS_BUILD_ONLY=1                   build the images and fetch the wheels, boot nothing
#                                        (e.g. niced, while another VM uses the CPUs)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CHECKOUT="$(cd "$HERE/../.." && pwd)"
CACHE="${HOSTS_CACHE:-/var/tmp/lxcbind-hosts}"
MIRROR="${HOSTS_MIRROR:-http://deb.debian.org/debian}"
MEM="${HOSTS_MEM:-6144}"; CPUS="${HOSTS_CPUS:-2}"; TIMEOUT="${HOSTS_TIMEOUT:-10800}"
ACCEL="${HOSTS_ACCEL:-$([ -e /dev/kvm ] && echo kvm || echo tcg)}"
# The README's packages, the tests' (busybox-static, tmux, nftables, git), and what makes it a
# host like the users' (Debian's kernel, systemd as init: pure cgroup v2, AppArmor enabled);
# the benchmarks' tools: perf (the same name in bookworm and trixie, built with the kernel) for
# bench_floor.py --cpu, bubblewrap for its floor row (no test uses either).
PACKAGES="linux-image-amd64 systemd-sysv udev kmod dbus apparmor lxc lxc-dev libnftables-dev
    nftables pkg-config gcc libc6-dev python3-dev python3-venv e2fsprogs busybox-static iproute2 tmux
    procps git linux-perf bubblewrap"
# What pip installs in the guest (from wheels: the guest has no network): the build
# requirements and the test and lint extras of pyproject.toml.
WHEELS="setuptools>=61 wheel cffi>=1.16 pytest>=7 pytest-timeout>=2 ruff==0.17.6 mypy==2.4.1"

log() { printf '[hosts %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot)"
for tool in debootstrap qemu-system-x86_64 qemu-img mkfs.ext4 python3 git; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install debootstrap qemu-system-x86 qemu-utils)"
done

pyver() { case "$1" in bookworm) echo 3.11 ;; trixie) echo 3.13 ;; *) die "unknown release $1" ;; esac; }

image() {   # $1 = release: $CACHE/<release>/{disk.qcow2,vmlinuz,initrd.img}, made once
    local rel="$1" dir="$CACHE/$1" root="$CACHE/$1/root" stamp
    # Rebuilt when what makes the image changes (this function included), not for any edit
    # of this script.
    stamp="$(printf '%s\n' "$MIRROR" $PACKAGES "$(declare -f image)" | sha256sum | cut -c1-16)"
    if [ -f "$dir/disk.qcow2" ] && [ "$(cat "$dir/stamp" 2>/dev/null)" = "$stamp" ]; then return; fi
    log "$rel: building the image (debootstrap and apt-get: several minutes)"
    rm -rf "$dir"; mkdir -p "$dir"
    debootstrap --variant=minbase --include=systemd-sysv "$rel" "$root" "$MIRROR" > "$dir/build.log" 2>&1 \
        || { tail -20 "$dir/build.log"; die "debootstrap failed"; }
    # What booting from a virtio disk needs in the initramfs, whatever this machine is.
    mkdir -p "$root/etc/initramfs-tools"
    printf 'virtio_pci\nvirtio_blk\nvirtio_rng\next4\n' > "$root/etc/initramfs-tools/modules"
    printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"; chmod +x "$root/usr/sbin/policy-rc.d"
    # A devpts of its own: apt-get logs through a pty (without one: "Can not write log").
    mount -t proc proc "$root/proc"; mount --bind /dev "$root/dev"
    mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts"
    local rc=0
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        sh -c "apt-get update -qq && apt-get install -y -q $(echo $PACKAGES) && apt-get clean" \
        >> "$dir/build.log" 2>&1 || rc=$?
    umount "$root/dev/pts" "$root/dev" "$root/proc"
    rm -f "$root/usr/sbin/policy-rc.d"
    [ "$rc" = 0 ] || { tail -20 "$dir/build.log"; die "apt-get install failed"; }
    echo lxcbind-host > "$root/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 lxcbind-host\n' > "$root/etc/hosts"
    echo 'LABEL=hosts-root / ext4 rw 0 1' > "$root/etc/fstab"
    : > "$root/etc/resolv.conf"
    [ -s "$root/etc/machine-id" ] || tr -d '-' < /proc/sys/kernel/random/uuid > "$root/etc/machine-id"
    for unit in apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer fstrim.timer; do
        ln -sf /dev/null "$root/etc/systemd/system/$unit"
    done
    # The guest side: mount the share, unpack the checkout, run guest.sh, power off.
    cat > "$root/usr/local/sbin/lxcbind-hosts-task" <<'GUEST'
#!/bin/bash
mkdir -p /mnt/hosts
modprobe 9pnet_virtio; modprobe 9p
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 hosts /mnt/hosts || exit 1
mkdir -p /mnt/hosts/out /checkout
echo started > /mnt/hosts/out/started
tar -C /checkout -xf /mnt/hosts/in/checkout.tar
. /mnt/hosts/in/env
cd /checkout
HOME=/root LANG=C.UTF-8 HOSTS_OUT=/mnt/hosts/out HOSTS_WHEELS=/mnt/hosts/in/wheels \
    setsid bash tests/hosts/guest.sh < /dev/null > /mnt/hosts/out/output.log 2>&1
echo $? > /mnt/hosts/out/exit_code
sync
GUEST
    chmod 755 "$root/usr/local/sbin/lxcbind-hosts-task"
    cat > "$root/etc/systemd/system/lxcbind-hosts.service" <<'UNIT'
[Unit]
Description=lxcbind host matrix: run tests/hosts/guest.sh, then power off
After=multi-user.target apparmor.service lxc.service lxc-net.service
ConditionKernelCommandLine=lxcbind.hosts=1
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/lxcbind-hosts-task
ExecStopPost=/bin/systemctl poweroff --no-block
TimeoutStartSec=infinity
[Install]
WantedBy=multi-user.target
UNIT
    ln -sf /etc/systemd/system/lxcbind-hosts.service "$root/etc/systemd/system/multi-user.target.wants/"
    local kver; kver="$(ls "$root/lib/modules" | sort -V | tail -1)"
    cp "$root/boot/vmlinuz-$kver" "$dir/vmlinuz"; cp "$root/boot/initrd.img-$kver" "$dir/initrd.img"
    truncate -s 16G "$dir/disk.raw"
    mkfs.ext4 -q -F -L hosts-root -E root_owner=0:0 -d "$root" "$dir/disk.raw"
    qemu-img convert -O qcow2 "$dir/disk.raw" "$dir/disk.qcow2"
    rm -rf "$dir/disk.raw" "$root"
    echo "$stamp" > "$dir/stamp"
}

wheels() {  # $1 = release: the wheels for its Python, fetched with this machine's pip
    local dest="$CACHE/wheels/$(pyver "$1")"
    mkdir -p "$dest"
    # shellcheck disable=SC2086
    python3 -m pip download -q --dest "$dest" --only-binary=:all: --implementation cp \
        --python-version "$(pyver "$1")" --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 $WHEELS >&2
    echo "$dest"
}

boot() {   # $1 = kvm|tcg, $2 = release, $3 = run directory: returns when the VM is gone
    local accel=(-accel tcg,thread=multi -cpu max) qpid start
    [ "$1" = kvm ] && accel=(-enable-kvm -cpu host)
    log "$2: booting ($1, $CPUS vCPU, $MEM MiB, no network device); results in $3"
    rm -f "$3/overlay.qcow2"
    qemu-img create -q -f qcow2 -b "$CACHE/$2/disk.qcow2" -F qcow2 "$3/overlay.qcow2"
    qemu-system-x86_64 -nodefaults -nic none -machine q35 "${accel[@]}" -m "$MEM" -smp "$CPUS" \
        -kernel "$CACHE/$2/vmlinuz" -initrd "$CACHE/$2/initrd.img" \
        -append "root=LABEL=hosts-root rw console=ttyS0 panic=-1 lxcbind.hosts=1" \
        -drive "file=$3/overlay.qcow2,format=qcow2,if=virtio,cache=unsafe" \
        -virtfs "local,path=$3/share,mount_tag=hosts,security_model=none" -device virtio-rng-pci \
        -display none -monitor none -serial "file:$3/serial-$1.log" -no-reboot \
        -pidfile "$3/qemu.pid" -daemonize || return 0
    qpid="$(cat "$3/qemu.pid")"; start=$(date +%s)
    while kill -0 "$qpid" 2>/dev/null; do
        if [ "$1" = kvm ] && [ ! -f "$3/share/out/started" ] && [ $(( $(date +%s) - start )) -ge 180 ]; then
            kill "$qpid"; break
        fi
        if [ $(( $(date +%s) - start )) -ge "$TIMEOUT" ]; then
            log "$2: timeout after $TIMEOUT s: killing the VM"; kill "$qpid"; break
        fi
        sleep 5
    done
}

run_one() {  # $1 = release
    local rel="$1" run share rc
    image "$rel"
    run="$CACHE/results/$rel-$(date +%Y%m%d-%H%M%S)"; share="$run/share"
    mkdir -p "$share/in/wheels" "$share/out"
    cp "$(wheels "$rel")"/*.whl "$share/in/wheels/"
    ( cd "$CHECKOUT" && { git ls-files -co --exclude-standard -z | while IFS= read -r -d '' f; do
            [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"; done; printf '.git\0'; } \
        | tar --null -T - -cf "$share/in/checkout.tar" )
    env | grep -E '^HOSTS_(TESTS|BUDGET|LINT|BENCH)=' | sed -E "s/^([A-Z_]+)=(.*)$/export \1='\2'/" > "$share/in/env" || true
    # The commit measured (a worktree's .git is a pointer that means nothing in the guest).
    printf "export HOSTS_COMMIT='%s%s'\n" "$(git -C "$CHECKOUT" log -1 --format=%h)" \
        "$(git -C "$CHECKOUT" diff --quiet HEAD || echo ' (with local changes)')" >> "$share/in/env"
    boot "$ACCEL" "$rel" "$run"
    # KVM that cannot boot this kernel (qemu dies at once, or no task after 3 minutes): TCG.
    if [ "$ACCEL" = kvm ] && [ ! -f "$share/out/started" ]; then
        log "$rel: the guest did not start under KVM: software emulation (tcg) instead"
        boot tcg "$rel" "$run"
    fi
    rm -f "$run/overlay.qcow2"
    rc="$(cat "$share/out/exit_code" 2>/dev/null || echo none)"
    log "$rel: done (guest.sh exit status: $rc); output: $share/out/output.log"
    cat "$share/out/facts.txt" "$share/out/commands.txt" "$share/out/summary.txt" \
        "$share/out/bench.txt" 2>/dev/null \
        | tee "$run/matrix.txt"
}

mkdir -p "$CACHE"
[ $# -gt 0 ] || set -- bookworm trixie
for rel in "$@"; do
    if [ "${HOSTS_BUILD_ONLY:-0}" = 1 ]; then image "$rel"; wheels "$rel" > /dev/null
    else run_one "$rel"; fi
done
