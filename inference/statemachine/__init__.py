"""The inference state machine: ``pipeline.asl.json`` (what Terraform deploys) and
:mod:`setup.tools.local_statemachine`, which runs that same file on moto's interpreter in-process."""

from pathlib import Path

DEFINITION_PATH = Path(__file__).with_name("pipeline.asl.json")

__all__ = ["DEFINITION_PATH"]
