"""The public conformance kit for optimizers, learned optimizers and task families."""
