"""The real hypervisor driver: one daemonized QEMU process per VM, qemu-img for layers."""

from strato.agent.drivers.qemu.driver import QemuDriver

__all__ = ["QemuDriver"]
