"""pytest plugin of the conformance kit (entry point ``pytest11``)."""
