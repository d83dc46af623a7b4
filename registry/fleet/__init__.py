"""MLOps' side of the fleet channel (MQTT).

- :mod:`registry.fleet.collect`: read the broker's retained device messages (as the ``controller`` user) into a
  :class:`~registry.fleet.collect.FleetSnapshot`; every message that breaks the contract is counted, never fatal.
- :mod:`registry.fleet.status`: render a snapshot for people (a table) and machines (JSON); pure.

Errors (converted from paho at the boundary)::

    OtamlError
    ├── TemporaryError
    │   └── BrokerUnavailable     the broker cannot be reached or did not answer in time: retry later
    └── BrokerRefused             the broker refused the controller's credentials or subscription: fix them
"""
