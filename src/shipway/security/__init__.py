"""Security: guards on what goes into and comes out of the models."""
