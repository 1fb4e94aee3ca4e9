"""Strato: a storage-centric cloud management platform for KVM/QEMU hosts."""

__version__ = "0.1.0"
