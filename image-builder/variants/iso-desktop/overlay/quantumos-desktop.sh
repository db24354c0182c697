# /etc/profile.d/quantumos-desktop.sh of the QuantumOS desktop live ISO:
# the live user's login shell on the first console runs sway, whose
# configuration opens the assistant (/etc/sway/config.d/quantumos-assistant).
# Anywhere else (another console, ssh, root) nothing changes.
if [ "$(id -un)" = quantum ] && [ "$(tty)" = /dev/tty1 ] && [ -z "${WAYLAND_DISPLAY:-}" ]; then
    # No GPU to count on (a VM, unknown hardware): the software renderers
    # of wlroots and GTK, which need no Mesa drivers.
    export WLR_RENDERER=pixman GSK_RENDERER=cairo
    export XDG_CURRENT_DESKTOP=sway XDG_SESSION_TYPE=wayland
    # Not `exec sway`: when sway cannot start (a display it cannot drive,
    # such as QEMU's default VGA, bochs-drm, which bookworm's wlroots
    # refuses for want of PRIME import), the login would end, getty log in
    # again and sway fail again every few seconds, with the console
    # unusable. Leaving sway logs out as before (and getty logs in again);
    # a failure leaves this shell, saying why.
    quantumos_sway_log=${XDG_RUNTIME_DIR:-/tmp}/sway.log
    if sway 2>"$quantumos_sway_log"; then
        exit 0
    fi
    unset WLR_RENDERER GSK_RENDERER XDG_CURRENT_DESKTOP XDG_SESSION_TYPE
    printf '\nsway could not start the desktop; the end of its log (%s):\n' "$quantumos_sway_log"
    grep -E '\[ERROR\]' "$quantumos_sway_log" | tail -n 5
    printf '\nThis console is a shell instead; `sway` tries again. In QEMU, use -vga virtio.\n\n'
    unset quantumos_sway_log
fi
