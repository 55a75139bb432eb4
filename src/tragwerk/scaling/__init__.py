"""Component 5, load distribution and scaling: the gateway configuration."""
