#!/bin/sh
# Start the mdext arrays found on the block devices udev knows; with --run,
# start those with missing members degraded too. The daemon is
# mdextmon-initrd.service (mdextctl starts it if it is not running yet),
# which keeps running across the switch to the real root until
# mdextmon.service there takes it over.
type info >/dev/null 2>&1 || . /lib/dracut-lib.sh
if [ "$1" = "--run" ]; then
    info "mdext: starting arrays with missing members degraded (last resort)"
    mdextctl assemble --scan --run 2>&1 | vinfo
else
    info "mdext: assembling arrays"
    mdextctl assemble --scan 2>&1 | vinfo
fi
exit 0
