"""A plugin that does nothing in every request phase: the pipeline's own cost
per plugin (plugins-per-route scaling). Made visible to the benchmarked
gateway only, through a generated ``.dist-info`` on its PYTHONPATH."""

from bascule_sdk import Context, Plugin, Response, hookimpl


class Noop(Plugin):
    name = "noop"
    priority = 10

    @hookimpl
    async def on_request(self, ctx: Context) -> None:
        return None

    @hookimpl
    async def on_response(self, ctx: Context, response: Response) -> None:
        return None

    @hookimpl
    async def on_log(self, ctx: Context, response: Response) -> None:
        return None
