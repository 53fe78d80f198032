"""Tools the LLM may call: tenant webhooks (signed, validated, bounded)."""
