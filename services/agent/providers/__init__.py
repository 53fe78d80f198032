"""Provider adapters behind the ports in services/agent/ports.py, one package per port."""
