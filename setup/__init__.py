"""Operator tooling above the product: the `landcover` CLI, compose/infra helpers and dev tools."""
