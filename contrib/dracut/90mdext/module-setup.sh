#!/bin/bash
# dracut module: put mdext into the initrd so a root filesystem on an mdext
# array can be assembled before it is mounted (Fedora, RHEL, Debian with
# dracut, ...). Installed as /usr/lib/dracut/modules.d/90mdext/ by
# scripts/install; `dracut --force` includes it when the root (or another
# filesystem the initrd mounts) is on an mdext array, in a generic
# (hostonly=no) image whenever mdext is installed, or always with
# `--add mdext`.
#
# Shaped like dracut's own 90mdraid: udev rules assemble the arrays as their
# members appear (mdextctl incremental, as mdadm --incremental), an
# initqueue job assembles what udev left (settled) and, as the last resort,
# starts arrays with missing members degraded (timeout), rd.mdext=0 turns it
# off. Where 90mdraid leaves mdmon to mdmon@.service, the daemon here is
# mdextmon-initrd.service (systemd in the initrd) or a daemon spawned by
# mdextctl (no systemd), which serves the root across the switch to the
# real root until mdextmon.service takes it over.

# called by dracut
check() {
    require_binaries mdextctl mdextmon || return 1
    # Host-only images: only when a filesystem dracut mounts sits on a
    # running mdext array (md's metadata_version is external:mdext:...).
    if [[ $hostonly ]] || [[ $mount_needs ]]; then
        local dev found=""
        for dev in "${!host_fs_types[@]}"; do
            local name md
            name=$(basename "$(readlink -f "$dev")")
            md=/sys/class/block/$name/md/metadata_version
            [[ -r $md ]] || continue
            [[ $(< "$md") == external:mdext:* ]] && found=1
        done
        [[ $found ]] || return 255
    fi
    return 0
}

# called by dracut
depends() {
    # (dracut-ng has a separate initqueue module; dracut 059 has it in base)
    echo rootfs-block
    local d
    for d in "$dracutbasedir"/modules.d/[0-9][0-9]initqueue; do
        [[ -d $d ]] && echo initqueue
    done
    return 0
}

# called by dracut
installkernel() {
    # mdext starts arrays through sysfs, which loads no personality.
    hostonly='' instmods md_mod raid0 raid1 raid10 raid456
}

# called by dracut
install() {
    inst_multiple mdextctl mdextmon
    # udev rules call /usr/sbin/mdextctl by that path.
    local b
    for b in mdextctl mdextmon; do
        [[ -e $initdir/usr/sbin/$b ]] || inst "$(command -v "$b")" "/usr/sbin/$b"
    done
    local r
    for r in /usr/lib/udev/rules.d/*mdext*.rules /lib/udev/rules.d/*mdext*.rules \
        /etc/udev/rules.d/*mdext*.rules; do
        [[ -e ${dracutsysrootdir-}$r ]] && inst_rules "$r"
    done
    [[ -e ${dracutsysrootdir-}/etc/mdext.conf ]] && inst_simple /etc/mdext.conf
    # md itself, loaded early (systemd-modules-load, or dracut's base
    # without systemd): mdextctl creates arrays through md_mod's new_array
    # parameter, which nothing else would load; md loads the personality
    # (raid1, ...) when the array's level is set.
    mkdir -p "$initdir/etc/modules-load.d"
    echo md_mod >"$initdir/etc/modules-load.d/mdext.conf"
    inst_script "$moddir/mdext-assemble.sh" /sbin/mdext-assemble
    inst_hook pre-trigger 30 "$moddir/parse-mdext.sh"
    inst_hook shutdown 30 "$moddir/mdext-shutdown.sh"

    if dracut_module_included "systemd"; then
        # The daemon of the initrd: a unit that survives the switch to the
        # real root (see the unit file), started before udev sees the
        # members; mdextctl starts it too if it is not running.
        local u
        for u in mdextmon-initrd.service mdext-last-resort@.service mdext-last-resort@.timer; do
            if [[ -e ${dracutsysrootdir-}$systemdsystemunitdir/$u ]]; then
                inst_simple "$systemdsystemunitdir/$u"
            fi
        done
        inst_multiple sh mount mkdir grep readlink ln chroot
        inst_script "$moddir/mdext-initrd-root.sh" /usr/sbin/mdext-initrd-root
        ln -sf mdextmon "$initdir/usr/sbin/@mdextmon"
        if [[ -e $initdir$systemdsystemunitdir/mdextmon-initrd.service ]]; then
            $SYSTEMCTL -q --root "$initdir" add-wants sysinit.target mdextmon-initrd.service
        else
            dwarn "mdext: $systemdsystemunitdir/mdextmon-initrd.service is not installed; the initrd's mdextmon will not survive the switch to the real root"
        fi
    else
        # No systemd in the initrd: mdextctl spawns the daemon as
        # @mdextmon. Untested: a daemon rooted in the initrd loses /sys and
        # /dev when switch_root moves them (initramfs-tools' local-top/mdext
        # runs it in a root of its own for that reason).
        dwarn "mdext: no systemd in this initrd; the root array's daemon is spawned by mdextctl (untested)"
    fi
}
