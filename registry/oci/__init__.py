"""OCI images for otaml: pure value types, and one module per place images live, with the same verbs.

image.py    manifests, indexes, configs: build, parse, canonical bytes, digests (pure)
layer.py    the reproducible tar.gz layer holding a model bundle (pure: bytes in, bytes out)
store.py    the ``Store`` protocol every place implements: resolve, read_manifest, read_blob,
            has_blob, write_blob, write_manifest, tags
layout.py   an OCI image layout directory (``oci:PATH:TAG``)
remote.py   a registry repository over the distribution API (``HOST:PORT/REPO:TAG``)
refs.py     parse a REF and open the store it names
errors.py   ``doing("pushing blob x")``: wrap errors with a gerund phrase, keeping their type
"""
