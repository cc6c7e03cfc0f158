"""How OCI layers and overlayfs spell what a layer holds besides files, in one
place for the unpacker (``layertar``), the packer (``layerpack``), directory
imports (``dirsource``) and content manifests (``content``).

OCI marks a deleted path with an empty file ``.wh.NAME`` and a directory whose
lower contents are hidden with ``.wh..wh..opq``; overlayfs marks the same with a
character device 0/0 named NAME and the xattr ``trusted.overlay.opaque=y``.
The kernel's other ``trusted.overlay.*`` xattrs describe one particular mount.
A tar carries xattrs as PAX records named ``SCHILY.xattr.NAME``.
"""
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
OVERLAY_XATTR_PREFIX = "trusted.overlay."
PAX_XATTR_PREFIX = "SCHILY.xattr."
