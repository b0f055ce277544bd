# Provisioner, last: leaves nothing of the build behind that one host could share with another.
set -eu
export DEBIAN_FRONTEND=noninteractive
# Purging removes the host keys too. The build's own connection survives: Debian's ssh.service
# stops only the listener (KillMode=process).
apt-get purge -y -q openssh-server openssh-sftp-server
rm -rf /root/.ssh
apt-get clean
rm -rf /var/lib/apt/lists/*
# Empty, not absent: systemd makes a new one at the host's first boot (and runs first-boot units).
: >/etc/machine-id
rm -f /var/lib/dbus/machine-id
# Stopped now, so it saves its seed here and not again at the build's shutdown; the file goes, or
# every host made from the image would start its entropy pool from the same seed.
systemctl stop systemd-random-seed.service
rm -f /var/lib/systemd/random-seed
dpkg-query -W >/tmp/ironroot-image/out/manifest.txt
