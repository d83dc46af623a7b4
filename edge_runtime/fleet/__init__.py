"""The device's side of the fleet: what it reports (MQTT messages) and which version a rollout gives it.

- :mod:`edge_runtime.fleet.messages`: topics and the JSON documents a device publishes (state, events).
- :mod:`edge_runtime.fleet.rollout`: the signed rollout record and the device's own wave decision.
"""
