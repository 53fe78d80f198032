"""The platform's Python services: agent, bridge, control, worker, and what they share."""
