#!/bin/sh
# dracut shutdown hook (in the initramfs dracut returns to at shutdown):
# wait until every mdext array is recorded clean, like mdraid's
# `mdadm --wait-clean --scan`.
if command -v mdextctl >/dev/null 2>&1; then
    mdextctl wait --clean --scan >/dev/null 2>&1 || :
fi
