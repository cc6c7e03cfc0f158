"""Image formats: what stacko reads and writes besides its own state.

``layertar`` unpacks one layer's tar (whiteouts, xattrs, holes), read by
``tarstream``, stacko's own tar reader (``tarfields`` checks a header's
fields); ``layerpack`` packs one; ``spellings`` is how OCI and overlayfs
spell whiteouts and opaque directories, for both;
``ocisource`` reads OCI layouts and archives, docker archives and rootfs
tarballs; ``ociexport`` writes OCI archives; ``dirsource`` copies a plain
directory in; ``compression`` is gzip (ISA-L) and zstd; ``runsettings`` is the
OCI config's run settings (Env, Cmd, ...).  The commands that use them are in
``stacko.oci`` (import, export) and ``stacko.registry`` (pull, push).
"""
