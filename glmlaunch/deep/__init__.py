"""Deep pre-flight checks that run the trainer's own libraries (megatron-core) or read checkpoint files."""
