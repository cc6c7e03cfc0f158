"""stacko: stackable overlayfs images, instances and stackpoints."""

__version__ = "0.1.0"
