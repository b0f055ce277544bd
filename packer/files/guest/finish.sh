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
dpkg-query -W >/tmp/ironroot-image/out/manifest.txt
