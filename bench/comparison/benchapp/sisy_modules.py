"""The benchmark's job as a sisy module: one job task that returns its ``n``."""

from __future__ import annotations

from typing import Any

import bench_common

from sisy.modules import Module, register


@register("bench.echo")
class Echo(Module):
    schema = {
        "type": "object",
        "required": ["n"],
        "properties": {"n": {"type": "integer"}},
        "additionalProperties": False,
    }

    def run(self) -> Any:
        return bench_common.echo(self.data["n"])
