#!/bin/sh
# Start the mdext arrays found on the block devices udev knows; with --run,
# start those with missing members degraded too. mdextctl starts mdextmon,
# which keeps running across switch-root (its argv[0] starts with '@', so
# systemd leaves it alone) until mdextmon.service takes it over.
type info >/dev/null 2>&1 || . /lib/dracut-lib.sh
if [ "$1" = "--run" ]; then
    info "mdext: starting arrays with missing members degraded (last resort)"
    mdextctl assemble --scan --run 2>&1 | vinfo
else
    info "mdext: assembling arrays"
    mdextctl assemble --scan 2>&1 | vinfo
fi
exit 0
