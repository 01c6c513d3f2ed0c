"""Model card templates; installed as the package ``hf_qat.hub.templates`` (see pyproject.toml)."""
