# The ironroot appliance image: boots the raw GPT disk that scripts/build-image.mjs assembled from a
# mmdebstrap root (Debian's signed shim → grub → kernel on the ESP, ext4 root), under OVMF with Secure
# Boot on and a swtpm vTPM, and finishes it over SSH. That boot is the image's first measured boot:
# its event log is downloaded and becomes the image's firmware profile. Run through
# `npm run image -- --variant agent|server`, which starts swtpm and fills in the paths below.

variable "variant" {
  type        = string
  description = "agent or server: which ironroot unit the image enables"
  validation {
    condition     = contains(["agent", "server"], var.variant)
    error_message = "The variant must be agent or server."
  }
}

variable "disk_image" {
  type        = string
  description = "the raw GPT disk built by scripts/build-image.mjs"
}

variable "output_directory" {
  type        = string
  description = "where packer writes the finished disk (must not exist)"
}

variable "ssh_private_key_file" {
  type        = string
  description = "the key made for this build; the guest authorises it only until the build ends"
}

variable "swtpm_socket" {
  type        = string
  description = "control socket of the swtpm the build started"
}

variable "ovmf_code" {
  type    = string
  default = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
}

variable "ovmf_vars" {
  type        = string
  description = "a writable copy of OVMF_VARS_4M.ms.fd (Microsoft's keys enrolled: Secure Boot on)"
}

variable "serial_log" {
  type        = string
  description = "the guest's serial console is written here"
}

variable "download_directory" {
  type        = string
  description = "the event log and the package manifest are downloaded here"
}

variable "accelerator" {
  type        = string
  default     = "tcg"
  description = "tcg (default; works everywhere) or kvm"
}

variable "memory" {
  type    = number
  default = 1024
}

source "qemu" "appliance" {
  iso_url          = var.disk_image
  iso_checksum     = "none"
  disk_image       = true
  format           = "raw"
  skip_resize_disk = true
  skip_compaction  = true
  output_directory = var.output_directory
  vm_name          = "ironroot-appliance-${var.variant}.raw"
  accelerator      = var.accelerator
  machine_type     = "q35"
  memory           = var.memory
  cpus             = 2
  disk_interface   = "virtio"
  net_device       = "virtio-net"
  headless         = true
  boot_wait        = "0s"
  # Any -drive or -device here replaces all of packer's own, so the disk and the NIC are listed too.
  qemuargs = [
    ["-drive", "file=${var.output_directory}/ironroot-appliance-${var.variant}.raw,if=virtio,cache=writeback,discard=ignore,format=raw"],
    ["-device", "virtio-net,netdev=user.0"],
    # The Secure Boot build of OVMF keeps its variables in SMM-protected flash.
    ["-machine", "q35,smm=on,accel=${var.accelerator}"],
    ["-global", "driver=cfi.pflash01,property=secure,value=on"],
    ["-drive", "if=pflash,format=raw,unit=0,readonly=on,file=${var.ovmf_code}"],
    ["-drive", "if=pflash,format=raw,unit=1,file=${var.ovmf_vars}"],
    ["-chardev", "socket,id=chrtpm,path=${var.swtpm_socket}"],
    ["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"],
    ["-device", "tpm-tis,tpmdev=tpm0"],
    ["-serial", "file:${var.serial_log}"],
    ["-display", "none"],
  ]
  communicator         = "ssh"
  ssh_username         = "root"
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = "30m"
  shutdown_command     = "systemctl poweroff"
  shutdown_timeout     = "10m"
}

build {
  sources = ["source.qemu.appliance"]

  # scp puts a directory's contents only into a directory that exists.
  provisioner "shell" {
    inline = ["mkdir -p -m 0700 /tmp/ironroot-image"]
  }

  provisioner "file" {
    source      = "${path.root}/files/guest/"
    destination = "/tmp/ironroot-image"
  }

  provisioner "shell" {
    inline = ["sh /tmp/ironroot-image/install.sh ${var.variant}"]
  }

  provisioner "shell" {
    inline = ["sh /tmp/ironroot-image/verify.sh ${var.variant}"]
  }

  # Last: removes sshd, the build's key, the host keys and the machine id. The open connection
  # outlives sshd (Debian's ssh.service stops only the listener), so the downloads still work.
  provisioner "shell" {
    inline = ["sh /tmp/ironroot-image/finish.sh"]
  }

  provisioner "file" {
    direction   = "download"
    source      = "/tmp/ironroot-image/out/binary_bios_measurements"
    destination = "${var.download_directory}/binary_bios_measurements"
  }

  provisioner "file" {
    direction   = "download"
    source      = "/tmp/ironroot-image/out/manifest.txt"
    destination = "${var.download_directory}/manifest.txt"
  }
}
