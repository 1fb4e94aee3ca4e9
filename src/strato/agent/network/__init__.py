"""The host side of guest networking: bridges, VXLAN, taps, the virtual router (a namespace with
dnsmasq). Served as the protocol's Role.NETWORK, outside the hypervisor drivers."""
