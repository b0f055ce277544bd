# Provisioner: checks what this boot proves before the image is sealed, and keeps its event log.
set -eu
variant=$1
ironroot-agent --version
ironroot-server --version
for unit in ironroot-firstboot.service "ironroot-$variant.service"; do
  [ "$(systemctl is-enabled "$unit")" = enabled ] || { echo "verify: $unit is not enabled" >&2; exit 1; }
done
# The kernel's own report: OVMF started shim with Secure Boot on, and every stage verified.
if ! dmesg | grep -q 'secureboot: Secure boot enabled'; then
  echo "verify: the kernel does not report Secure Boot enabled:" >&2
  dmesg | grep -i 'secure' >&2 || true
  exit 1
fi
mkdir -p /tmp/ironroot-image/out
# sysfs reports size 0, so the log is copied by reading, not by the file provisioner directly.
cat /sys/kernel/security/tpm0/binary_bios_measurements >/tmp/ironroot-image/out/binary_bios_measurements
[ -s /tmp/ironroot-image/out/binary_bios_measurements ] || { echo "verify: no firmware event log" >&2; exit 1; }
echo "verify: ironroot $variant image, Secure Boot enabled, event log $(wc -c </tmp/ironroot-image/out/binary_bios_measurements) bytes"
