#!/bin/sh
# Make the root that mdextmon-initrd.service's daemon runs in (its
# RootDirectory=): a small tmpfs holding bind mounts of /usr, /etc, /dev,
# /sys, /proc and /run (and the /bin, /sbin, /lib* links).
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
if grep -q " $R " /proc/self/mountinfo; then
    exit 0
fi
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
