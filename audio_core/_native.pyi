def native_version() -> str:
    """Version of the compiled Rust core."""
