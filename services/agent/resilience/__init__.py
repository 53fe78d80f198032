"""Circuit breakers and degradation chains (spec 12.2, 12.3) as adapters wrapping adapters."""
