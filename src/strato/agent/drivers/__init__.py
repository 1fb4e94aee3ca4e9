"""Hypervisor drivers: qemu (the real one) and simulator."""
