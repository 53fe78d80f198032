"""Knowledge retrieval for context assembly."""
