#!/bin/sh
# dracut pre-trigger hook: queue the assembly of mdext arrays. rd.mdext=0
# turns mdext off in the initramfs.
type getargbool >/dev/null 2>&1 || . /lib/dracut-lib.sh

if ! getargbool 1 rd.mdext; then
    info "rd.mdext=0: mdext arrays are not assembled in the initramfs"
    return 0 2>/dev/null || exit 0
fi
# Once udev has settled: every complete array (udev's rules assemble them
# as members appear where mdextctl incremental is installed; this catches
# the rest). On the main loop's timeout: the last resort, arrays still
# missing members are started degraded.
/sbin/initqueue --onetime --settled --name mdext_assemble /sbin/mdext-assemble
/sbin/initqueue --onetime --timeout --name mdext_run /sbin/mdext-assemble --run
