"""The device's trust policy: an image runs only if the fleet's TUF repository approves its digest.

    errors.py    the error tree, each error with a stable reason code (no python-tuf import)
    approval.py  what an approved image is (target path, digest, custom fields) and a verified set of them
    limits.py    size and time caps on every metadata read
    fetch.py     the network seam: any ngclient fetcher wrapped with those caps
    client.py    TrustClient: refresh with ``tuf.ngclient.Updater`` and answer "is this digest approved?"

Only ``fetch.py`` and ``client.py`` import python-tuf; ``edge_runtime.server`` never imports this package.
The MLOps side that writes the repository is :mod:`registry.tuf`.
"""
