#!/bin/sh
# dracut pre-trigger hook: queue the assembly of mdext arrays. rd.mdext=0
# turns mdext off in the initrd (udev's rules too), as rd.md=0 does for
# mdadm's arrays.
type getargbool >/dev/null 2>&1 || . /lib/dracut-lib.sh

if ! getargbool 1 rd.mdext; then
    info "rd.mdext=0: mdext arrays are not assembled in the initrd"
    rm -f /etc/udev/rules.d/*mdext*.rules /usr/lib/udev/rules.d/*mdext*.rules \
        /lib/udev/rules.d/*mdext*.rules
    udevadm control --reload >/dev/null 2>&1 || :
    return 0 2>/dev/null || exit 0
fi
# Once udev has settled: every complete array (udev's rules assemble them
# as members appear; this catches the rest). On the main loop's timeout:
# the last resort, arrays still missing members are started degraded.
/sbin/initqueue --onetime --settled --name mdext_assemble /sbin/mdext-assemble
/sbin/initqueue --onetime --timeout --name mdext_run /sbin/mdext-assemble --run
