"""Pulling and pushing images through OCI registries (the distribution API).

``ref`` parses a REF, ``client`` speaks HTTP to one registry (auth, TLS,
retries), ``pull`` and ``push`` move an image's layers.  The image formats
themselves stay in ``stacko.formats.ocisource``, ``stacko.formats.ociexport`` and
``stacko.formats.layertar``; the planning and recording of an import in ``stacko.oci``.
"""
