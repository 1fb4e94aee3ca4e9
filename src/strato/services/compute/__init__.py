"""Virtual machines: deploy, lifecycle, scale, ISOs, import. Imports every area before it."""
