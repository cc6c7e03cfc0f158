"""Signatures of the containers ecosystem and the trust policy that checks them.

``payload`` the signed JSON (containers-signature(5), cosign's), ``dockerref``
docker references as containers/image normalises them, ``policy``
containers-policy.json(5), ``registriesd`` containers-registries.d(5),
``lookaside`` where GnuPG signatures are stored, ``gpg`` GnuPG simple signing
through gpg, ``pushsign`` and ``pullsign`` what push-image and pull-image do
with them.  Nothing here is imported by commands that do not sign or check.
"""
