"""The OTA agent: poll a channel tag, verify, pull with containerd, canary, hand over, probation, roll back.

Modules, one concept each:

    config      the TOML configuration (AgentConfig, load_config)
    state       the atomic JSON state file (AgentState, StateStore)
    runtime     the ContainerRuntime protocol and ContainerSpec
    ctr         ContainerRuntime driving containerd's ``ctr``
    source      where candidate images come from (ImageSource; the OCI registry adapter)
    policy      the verification hook (VerificationPolicy)
    canary      readiness and golden replay against a container's private port
    handover    moving the public port between containers (TrafficSwitch; iptables REDIRECT)
    reconcile   one update step and start-up recovery, each returning an UpdateReport
    loop        the poll loop: interval + jitter, exponential back-off with jitter
    metrics     Prometheus text for the agent
    cli         ``agent run`` / ``agent status``

Imports stay lean (stdlib only in the agent process): the agent's RSS goal is 40 MB.
"""
