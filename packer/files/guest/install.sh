# Provisioner: installs the first-boot step and enables the variant's unit behind it.
set -eu
variant=$1
here=$(dirname "$0")
install -D -m 0755 "$here/ironroot-firstboot" /usr/lib/ironroot/firstboot
printf '%s\n' "$variant" >/usr/lib/ironroot/appliance-variant
install -m 0644 "$here/ironroot-firstboot.service" /etc/systemd/system/ironroot-firstboot.service
install -D -m 0644 "$here/appliance-$variant.conf" "/etc/systemd/system/ironroot-$variant.service.d/appliance.conf"
# The package's example configs: each host gets its own at first boot, and without one the unit
# must not start (ConditionPathExists=).
rm -f /etc/ironroot/agent.yaml /etc/ironroot/server.yaml
systemctl daemon-reload
systemctl enable ironroot-firstboot.service "ironroot-$variant.service"
# The image is updated as a whole (docs/appliance.md), never package by package on the host.
systemctl disable apt-daily.timer apt-daily-upgrade.timer
