"""The fleet seen from MLOps: device reports (MQTT), fleet status, rollouts in waves."""
