# /etc/profile.d/quantumos-desktop.sh of the QuantumOS desktop live ISO:
# the live user's login shell on the first console becomes sway, whose
# configuration opens the assistant (/etc/sway/config.d/quantumos-assistant).
# Anywhere else (another console, ssh, root) nothing changes.
if [ "$(id -un)" = quantum ] && [ "$(tty)" = /dev/tty1 ] && [ -z "${WAYLAND_DISPLAY:-}" ]; then
    # No GPU to count on (a VM, unknown hardware): the software renderers
    # of wlroots and GTK, which need no Mesa drivers.
    export WLR_RENDERER=pixman GSK_RENDERER=cairo
    export XDG_CURRENT_DESKTOP=sway XDG_SESSION_TYPE=wayland
    exec sway
fi
