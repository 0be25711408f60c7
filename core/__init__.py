"""The shared basics every package stands on: storage, artifact names, the model registry and
its card, config composition, the class table, NAIP reading and logging. Imports nothing above it."""
