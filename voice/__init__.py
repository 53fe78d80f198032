"""Generated from proto/ by scripts/generate.sh (`make generate`). Do not edit."""
