#!/bin/bash
# dracut module: put mdext into the initramfs so a root filesystem on an
# mdext array can be assembled before it is mounted (Fedora, RHEL, ...).
# Installed as /usr/lib/dracut/modules.d/90mdext/ by scripts/install;
# `dracut -f` includes it when the root (or another filesystem the initramfs
# mounts) is on an mdext array, or always with `--add mdext`.

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
            [[ $(<"$md") == external:mdext:* ]] && found=1
        done
        [[ $found ]] || return 255
    fi
    return 0
}

# called by dracut
depends() {
    echo rootfs-block
    return 0
}

# called by dracut
installkernel() {
    # mdext starts arrays through sysfs, which loads no personality.
    instmods md_mod raid1 raid10 raid456
}

# called by dracut
install() {
    inst_multiple mdextctl mdextmon
    local r
    for r in /usr/lib/udev/rules.d/*mdext*.rules /etc/udev/rules.d/*mdext*.rules; do
        [[ -e $r ]] && inst_rules "$r"
    done
    [[ -e /etc/mdext.conf ]] && inst_simple /etc/mdext.conf
    inst_script "$moddir/mdext-assemble.sh" /sbin/mdext-assemble
    inst_hook pre-trigger 30 "$moddir/parse-mdext.sh"
    inst_hook shutdown 30 "$moddir/mdext-shutdown.sh"
}
