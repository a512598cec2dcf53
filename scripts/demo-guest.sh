# Runs inside the guest (scripts/demo): the mdext lifecycle on loop devices.
set -e
step() { printf '\n==== %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
for i in 0 1; do
    truncate -s 128M /tmp/d$i.img
    losetup /dev/loop$i /tmp/d$i.img
done
step "create a raid1 with an external write-intent bitmap"
run mdextctl create --level 1 --raid-devices 2 --name demo --bitmap-chunk 64K --time-base 2 /dev/loop0 /dev/loop1
run mdextctl examine /dev/loop0
step "assemble: starts mdextmon, which manages the array; the initial resync runs"
run mdextctl assemble demo /dev/loop0 /dev/loop1
while [ "$(cat /sys/block/md127/md/sync_action)" != idle ]; do sleep 0.5; done
run cat /proc/mdstat
step "a filesystem on it"
run mkfs.ext4 -q -F /dev/md127
mkdir -p /mnt/demo
run mount /dev/md127 /mnt/demo
run dd if=/dev/urandom of=/mnt/demo/data bs=1M count=16 2>/dev/null
sync
md5sum /mnt/demo/data
step "while writing, md is active and its bitmap marks the chunks written: a mirror's dirty record, kept by md per chunk (the metadata stays clean, events unchanged)"
echo 10 > /sys/block/md127/md/safe_mode_delay
dd if=/dev/urandom of=/mnt/demo/more bs=64k count=4 oflag=direct 2>/dev/null
echo "array_state: $(cat /sys/block/md127/md/array_state)"
mdextctl examine /dev/loop1 | grep -E 'Events|State'
mdextctl examine-bitmap /dev/loop1 2>/dev/null || true
echo 0.2 > /sys/block/md127/md/safe_mode_delay
umount /mnt/demo
step "idle again: mdextmon took the array back to clean"
for i in $(seq 1 60); do
    [ "$(cat /sys/block/md127/md/array_state)" = clean ] && break
    sleep 0.5
done
echo "array_state: $(cat /sys/block/md127/md/array_state)"
mdextctl examine /dev/loop1 | grep -E 'Events|State'
mount /dev/md127 /mnt/demo
run mdextctl detail md127
run mdadm --detail /dev/md127
step "stop, assemble again by scanning, data intact"
umount /mnt/demo
run mdextctl stop demo
run mdextctl assemble --scan demo
mount /dev/md127 /mnt/demo
md5sum /mnt/demo/data
step "a member fails: mdextmon forbids md to clear bits, records the failure"
run mdextctl fail md127 /dev/loop1
echo "can_clear: $(cat /sys/block/md127/md/bitmap/can_clear)   degraded: $(cat /sys/block/md127/md/degraded)"
dd if=/dev/urandom of=/mnt/demo/while-degraded bs=64k count=16 2>/dev/null
sync
sleep 5
echo "after 5 s (md would have cleared idle bits by now if allowed):"
mdextctl examine-bitmap /dev/loop0 | tail -n +2
step "the member returns: rebuilt from the bitmap, only the dirty chunks"
W0=$(awk '{print $7}' /sys/block/loop1/stat)
run mdextctl add md127 /dev/loop1
while [ "$(cat /sys/block/md127/md/degraded)" != 0 ] || [ "$(cat /sys/block/md127/md/sync_action)" != idle ]; do sleep 0.5; done
sleep 1
echo "sectors written to the returning member: $(( $(awk '{print $7}' /sys/block/loop1/stat) - W0 )) (a full rebuild: 260096)"
echo "can_clear: $(cat /sys/block/md127/md/bitmap/can_clear)"
mdextctl examine /dev/loop1 | grep -E 'Events|Array State'
umount /mnt/demo
step "md's own scrub: mismatch_cnt must be 0"
echo check > /sys/block/md127/md/sync_action
sleep 0.5
while [ "$(cat /sys/block/md127/md/sync_action)" != idle ]; do sleep 0.5; done
echo "mismatch_cnt: $(cat /sys/block/md127/md/mismatch_cnt)"
run mdextctl status
run mdextctl stop demo
step "mdextmon's log"
cat /run/mdext/mdextmon.log 2>/dev/null | sed 's/^<[0-9]>//' | tail -20
