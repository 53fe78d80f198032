"""Language models: the offline policy (deterministic, from the agent's configuration) and Claude."""
