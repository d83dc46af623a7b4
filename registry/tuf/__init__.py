"""The fleet's TUF repository: the MLOps half of the device's trust policy (:mod:`edge_runtime.trust` reads it).

    keys.py        signing keys: generate (ECDSA P-256 or ed25519), write (private 0600), load
    store.py       where metadata files live: a plain directory served by any static HTTP server
    targets.py     what one approved model image looks like as a TUF target (name, hashes, custom fields)
    repository.py  create the repository; approve images (with pending approvals below the threshold);
                   re-sign the timestamp; rotate root keys and revoke keys
    errors.py      the error tree of this package

Roles and who holds them: ``root`` (offline keys, e.g. 2 of 3), ``targets`` (the MLOps approvers: production
needs 2 of 3, four eyes), ``snapshot`` and ``timestamp`` (online keys; a periodic command re-signs the timestamp).
"""
