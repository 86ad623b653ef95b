"""Mechanisms with no model knowledge: sharding and the sharded-model helper, checkpoints,
config JSON and the one ConfigError, distributed start-up, FLOPs, metrics, image metrics.

May import: data_pipelines. See docs/design.md for the map of the code.
"""
