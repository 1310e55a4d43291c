"""The scheduler's engines, over the supervisor: how a model and its placement become an
engine spec (argv and environment), and the sleep-mode calls.

The supervisor owns each engine's process; this adapter only builds the spec and asks. Sleep
and wake are HTTP calls on the engine's own port (vLLM's dev routes, `POST /sleep?level=1`,
`POST /wake_up`), and so is reading the context the engine really runs with (`GET
/v1/models`), made through callables the daemon hands in, so the scheduler never imports the
gateway's HTTP client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from vllama.config import ModelConfig
from vllama.models import facts
from vllama.models.facts import ModelFiles
from vllama.scheduler.placement import Placement
from vllama.supervisor import Engine, EngineSpec, Supervisor
from vllama.vllm_flags import flag_name, flags_set
from vllama.wire.openai import served_max_model_len

EnginePost = Callable[[int, str], Awaitable[int]]
"""`await post(port, path)` -> the HTTP status of a POST to the engine (0: no answer)."""
EngineGet = Callable[[int, str, str], Awaitable[bytes | None]]
"""`await get(port, path, api_key)` -> the body of a 200 answer to a GET, None otherwise."""

SLEEP_FLAG = "--enable-sleep-mode"
# vLLM serves /sleep and /wake_up only in its dev mode.
SLEEP_ENV = ("VLLM_SERVER_DEV_MODE", "1")


def placement_args(placement: Placement, user_args: Sequence[str]) -> list[str]:
    """The placement's flags the user did not set themselves (their vllm_args win)."""
    user = flags_set(user_args)
    out: list[str] = []
    args = list(placement.args)
    i = 0
    while i < len(args):
        flag = args[i]
        value = [args[i + 1]] if i + 1 < len(args) and not args[i + 1].startswith("--") else []
        if flag_name(flag) not in user:
            out += [flag, *value]
        i += 1 + len(value)
    return out


class SupervisedEngines:
    """`Engines` (vllama.scheduler.scheduler) over the Supervisor."""

    def __init__(self, supervisor: Supervisor, *, vllm_command: Sequence[str],
                 common_args: Sequence[str], engine_key: str, post: EnginePost,
                 get: EngineGet | None = None,
                 files: Callable[[ModelConfig], ModelFiles] = lambda m: facts.NO_FILES) -> None:
        """files: what the model's files say (the store's facts): the directory a repo in the
        cache is served from, and the chat template its parsers are chosen from."""
        self.supervisor = supervisor
        self._files = files
        self.vllm_command = tuple(vllm_command)
        self.common_args = tuple(common_args)
        self.engine_key = engine_key
        self._post = post
        self._get = get

    def spec(self, model: ModelConfig, placement: Placement, sleepable: bool) -> EngineSpec:
        files = self._files(model)
        args = list(facts.engine_args(files, model, self.common_args))
        extra = placement_args(placement, args)
        env = dict(placement.env)
        if sleepable:
            if SLEEP_FLAG not in flags_set(args):
                extra.append(SLEEP_FLAG)
            env[SLEEP_ENV[0]] = SLEEP_ENV[1]
        # A repo already in the cache is served from its snapshot directory: vLLM then never
        # asks the hub anything (vllama runs offline once a model is pulled).
        directory = files.directory if not model.source.startswith("/") else None
        return EngineSpec(name=model.name, source=str(directory) if directory else model.source,
                          vllm_command=self.vllm_command, vllm_args=(*extra, *args),
                          api_key=self.engine_key, env=tuple(sorted(env.items())))

    def launch(self, model: ModelConfig, placement: Placement, sleepable: bool) -> Engine:
        return self.supervisor.launch(self.spec(model, placement, sleepable))

    async def retire(self, key: str) -> None:
        await self.supervisor.retire(key)

    def get(self, key: str) -> Engine | None:
        return self.supervisor.get(key)

    async def max_model_len(self, key: str) -> int:
        """The context the engine runs with, as its `/v1/models` says (0: unknown). The
        placement may have shrunk it below the model's own, so nothing else knows it."""
        engine = self.supervisor.get(key)
        if engine is None or engine.port is None or self._get is None:
            return 0
        return served_max_model_len(await self._get(engine.port, "/v1/models", self.engine_key),
                                    key)

    async def sleep(self, key: str) -> bool:
        # A sleeping engine answers no request: its hang watch must not take that for a wedge.
        self._pause(key, True)
        ok = await self._call(key, "/sleep?level=1")
        if not ok:
            self._pause(key, False)
        return ok

    async def wake(self, key: str) -> bool:
        try:
            return await self._call(key, "/wake_up")
        finally:
            self._pause(key, False)

    def _pause(self, key: str, paused: bool) -> None:
        engine = self.supervisor.get(key)
        if engine is not None:
            engine.pause_watch(paused)

    async def _call(self, key: str, path: str) -> bool:
        engine = self.supervisor.get(key)
        if engine is None or engine.port is None:
            return False
        return await self._post(engine.port, path) == 200
