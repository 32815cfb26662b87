"""The conformance suite: numbered clauses (conformance/SPEC.md) checked on any target."""
