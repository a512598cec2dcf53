#!/bin/sh
# mdextmon-initrd.service's ExecStart: make the root its daemon runs in, a
# small tmpfs holding bind mounts of /usr, /etc, /dev, /sys, /proc and /run
# (and the /bin, /sbin, /lib* links), then exec the daemon chrooted there as
# "@mdextmon" (same pid: the unit's main process, Type=notify through the
# /run bind).
#
# Why: at the switch to the real root, systemd moves /dev, /proc, /sys and
# /run under the real root and then empties the initrd's root filesystem,
# removing its directories, also those that are mount points in another
# mount namespace (the kernel detaches such mounts), so neither a daemon
# rooted in the initrd nor one in a private mount namespace keeps them.
# Binds inside a tmpfs of their own stay: the emptying does not descend into
# another filesystem, and the moves leave binds alone. /run is the tmpfs the
# real root keeps, so mdextmon.service there finds this daemon's socket and
# takes over. (initramfs-tools' local-top/mdext does the same.)
set -e
R=${1:-/mdext-root}
if ! grep -q " $R " /proc/self/mountinfo; then
    mkdir -p "$R"
    mount -t tmpfs -o size=64k,mode=0755 mdext-root "$R"
    for d in usr etc dev sys proc run bin sbin lib lib32 lib64 libx32; do
        if [ -L "/$d" ]; then
            ln -s "$(readlink "/$d")" "$R/$d"
        elif [ -d "/$d" ]; then
            mkdir "$R/$d"
            mount --bind "/$d" "$R/$d"
        fi
    done
fi
# "@mdextmon" is a link to mdextmon (the dracut module makes it): found
# through PATH under that name, it becomes argv[0].
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
exec chroot "$R" @mdextmon
