"""Named configs: small Python files returning an ml_collections.ConfigDict."""
