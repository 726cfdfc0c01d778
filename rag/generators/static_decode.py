"""One-at-a-time decoding over a static KV cache, with the per-token step compiled once (CUDA graphs).

Used by the `hf` backend for `generate` and `stream` of a single request when `generator.compile` is
set on CUDA (rag/generators/hf.py); batches keep transformers' `generate`.

Why not `model.generate(cache_implementation="static", compile_config=...)`: measured on an H200
(docs/performance.md "LLM decoding"), SmolLM2-135M decoded at 344 tokens/s through it, while the
compiled forward alone takes well under a millisecond. The rest is generate()'s Python around each
step (input preparation, logits processors that copy the whole sequence, stopping criteria that wait
for the GPU). Here each step is one replay of the compiled forward plus a few small kernels:

* the repetition penalty reads a boolean "seen" mask over the vocabulary, updated in place, instead
  of gathering over the whole sequence;
* the answer n-gram blocker keeps a table of the answer's (n-1)-grams on the host, where the token
  already is (streaming needs it there anyway), and only touches the scores when a ban applies;
* the prompt's prefill runs eagerly (one forward, its shape differs per prompt); the static cache is
  allocated once per size class (`STATIC_CACHE_STEP`) and reset in place between requests, so the
  compiled step sees the same tensors every time.

Under greedy decoding the tokens equal `model.generate`'s with the same penalty and blocker (tested
on CPU, where the same loop runs uncompiled: tests/test_generators_hf.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from rag.generators.common import Sampling, boost_end

# The static KV cache is sized in steps of this many tokens, so that prompts of different lengths
# share one compiled decoding step.
STATIC_CACHE_STEP = 1024


def cache_length(needed: int, step: int = STATIC_CACHE_STEP) -> int:
    """`needed` rounded up to a multiple of `step` (at least one step)."""
    return max(step, -(-needed // step) * step)


class NgramBan:
    """Which next tokens would repeat an n-gram of `size` tokens already in the answer.

    The same rule as `answer_ngram_blocker` (rag/generators/hf.py), kept incrementally: the table maps
    every (size-1)-gram of the answer to the tokens that followed it."""

    def __init__(self, size: int):
        self.size = size
        self.answer: list[int] = []
        self.followers: dict[tuple[int, ...], set[int]] = {}

    def banned(self) -> list[int]:
        if self.size <= 0 or len(self.answer) < self.size - 1:
            return []
        key = tuple(self.answer[len(self.answer) - self.size + 1 :]) if self.size > 1 else ()
        return sorted(self.followers.get(key, ()))

    def add(self, token: int) -> None:
        if self.size > 0 and len(self.answer) >= self.size - 1:
            key = tuple(self.answer[len(self.answer) - self.size + 1 :]) if self.size > 1 else ()
            self.followers.setdefault(key, set()).add(token)
        self.answer.append(token)


class TokenPicker:
    """The next token from one row of logits, with the settings `generate` applies: repetition
    penalty, the answer n-gram ban, the end-token boost, the minimum length, then greedy or
    temperature/top-p sampling.

    Shared by both one-request loops (the eager one in rag/generators/hf.py and `StaticDecoder`).
    The penalty reads a boolean "seen" mask over the vocabulary, updated in place, instead of
    gathering over the whole sequence each token; the n-gram ban is `NgramBan`'s table on the host.
    Make and use it inside `torch.inference_mode()`."""

    def __init__(
        self, prompt: Any, vocab: int, sampling: Sampling, stop_ids: Sequence[int], min_new_tokens: int = 0
    ):
        import torch

        self.sampling = sampling
        self.penalty = float(sampling.repetition_penalty)
        self.seen = None
        if self.penalty != 1.0:
            self.seen = torch.zeros((1, vocab), dtype=torch.bool, device=prompt.device)
            self.seen[0, prompt[0]] = True
        self.ngrams = NgramBan(int(sampling.no_repeat_ngram_size or 0))
        self.warpers = _warpers(sampling)
        self.min_new_tokens = min_new_tokens
        stops = sorted({int(s) for s in stop_ids})
        self.stop_index = torch.tensor(stops, dtype=torch.long, device=prompt.device) if stops else None
        self.produced = 0

    def pick(self, logits: Any) -> Any:
        """The next token id as a (1,) tensor (still on the device); call `add` with it after."""
        import torch

        scores = logits.to(dtype=torch.float32)
        if self.seen is not None:
            scores = torch.where(
                self.seen, torch.where(scores < 0, scores * self.penalty, scores / self.penalty), scores
            )
        banned = self.ngrams.banned()
        if banned:
            scores[0, banned] = -torch.inf
        scores = boost_end(scores, self.stop_index, self.produced, self.sampling)
        if self.produced < self.min_new_tokens and self.stop_index is not None:
            scores[0, self.stop_index] = -torch.inf
        if self.sampling.greedy:
            return torch.argmax(scores, dim=-1)
        for warp in self.warpers:
            scores = warp(None, scores)
        return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)

    def add(self, token: int) -> None:
        """Record the picked token (its id on the host)."""
        self.note(token)
        if self.seen is not None:
            self.seen[0, token] = True

    def note(self, token: int) -> None:
        """The host-side half of `add`: the count and the n-gram table."""
        self.produced += 1
        self.ngrams.add(token)

    def mark(self, next_id: Any) -> None:
        """The device-side half of `add`, from the (1,) id tensor `pick` returned: no wait for the GPU."""
        if self.seen is not None:
            self.seen.scatter_(1, next_id.view(1, 1), True)


class StaticDecoder:
    """Decode one prompt at a time over a `StaticCache`, the per-token forward optionally compiled.

    `compile=True` wraps the one-token forward in `torch.compile(mode=compile_mode)`; both modes
    record it as a CUDA graph on a GPU, "max-autotune" also picks the fastest matmul kernels. The
    first request of each cache size pays the compilation.
    `compile=False` runs the same loop eagerly (any device), which is what the CPU tests check."""

    def __init__(
        self,
        model: Any,
        *,
        compile: bool = False,
        compile_mode: str = "max-autotune",
        cache_step: int = STATIC_CACHE_STEP,
        overlap: bool | None = None,
    ):
        self.model = model
        self.compile = compile
        self.compile_mode = compile_mode
        self.cache_step = cache_step
        self._caches: dict[int, Any] = {}
        self._step_fn: Any = None
        self._device = next(model.parameters()).device
        # queue each token's forward before reading the token back: on by default where kernels run
        # asynchronously (CUDA); on a CPU the forward would run before the token is handed out
        self.overlap = self._device.type == "cuda" if overlap is None else overlap

    def _cache(self, needed: int) -> Any:
        from transformers import StaticCache

        length = cache_length(needed, self.cache_step)
        cache = self._caches.get(length)
        if cache is None:
            cache = StaticCache(config=self.model.config, max_cache_len=length)
            self._caches[length] = cache
        else:
            cache.reset()
        return cache

    def _step(self) -> Any:
        if self._step_fn is None:
            model = self.model

            def forward(ids: Any, positions: Any, cache: Any) -> Any:
                return model(
                    input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True
                ).logits[:, -1, :]

            if self.compile:
                import torch

                from rag.generators.common import no_pickled_compile_caches

                no_pickled_compile_caches()
                # fullgraph: the one-token forward has no graph break (checked on the H200 with
                # TORCH_LOGS=graph_breaks), so any break that appears later is an error, not a slowdown
                forward = torch.compile(forward, mode=self.compile_mode, fullgraph=True, dynamic=False)
            self._step_fn = forward
        return self._step_fn

    def tokens(
        self, prompt_ids: Sequence[int], sampling: Sampling, stop_ids: Sequence[int], min_new_tokens: int = 0
    ) -> Iterator[int]:
        """The new token ids one by one; the last one is a stop id when the model stopped.

        `min_new_tokens` forbids the stop ids before that many tokens (benchmarks decode a fixed
        length). Closing the iterator early leaves the decoder ready for the next request."""
        import torch

        device = self._device
        step = self._step()
        # inference mode is per thread, and a server may pull each token in another worker thread:
        # every step enters it afresh (its tensors are made and changed only inside it), and no
        # `yield` happens inside it
        with torch.inference_mode():
            ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
            picker = TokenPicker(ids, int(self.model.config.vocab_size), sampling, stop_ids, min_new_tokens)
            cache = self._cache(len(prompt_ids) + sampling.max_new_tokens + 1)
            logits = self.model(
                input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1
            ).logits[:, -1, :]
        stops = {int(s) for s in stop_ids}
        overlap = self.overlap
        with torch.inference_mode():
            reader = _TokenReader(device, overlap)
            next_id = picker.pick(logits)
        for produced in range(sampling.max_new_tokens):
            last = produced + 1 >= sampling.max_new_tokens
            with torch.inference_mode():
                reader.start(next_id)
                if overlap and not last:
                    # the next forward is queued before this token is read back, so the GPU runs it
                    # while the host hands the token out (wasted only when the token is a stop)
                    picker.mark(next_id)
                    logits = step(next_id.view(1, 1), _position(len(prompt_ids) + produced, device), cache)
                token = reader.wait()
            yield token
            if token in stops or last:
                return
            with torch.inference_mode():
                picker.note(token)
                if not overlap:
                    picker.mark(next_id)
                    logits = step(next_id.view(1, 1), _position(len(prompt_ids) + produced, device), cache)
                next_id = picker.pick(logits)


def _position(position: int, device: Any) -> Any:
    import torch

    # a fresh (1, 1) tensor each step, not a view into one long tensor: the compiled step is
    # specialised on its inputs' layout, and a moving storage offset could recompile it
    return torch.full((1, 1), position, dtype=torch.long, device=device)


class _TokenReader:
    """Reads a picked token id back to the host.

    On CUDA with `overlap` the copy goes to pinned memory ahead of the next forward, and the host waits
    on an event recorded after the copy only, not on the whole stream (a plain `int(tensor)` would
    also wait for the forward queued after it)."""

    def __init__(self, device: Any, overlap: bool):
        import torch

        self.pending: Any = None
        self.cuda = overlap and device.type == "cuda"
        if self.cuda:
            self.host = torch.empty(1, dtype=torch.long, pin_memory=True)
            self.event = torch.cuda.Event()

    def start(self, next_id: Any) -> None:
        if self.cuda:
            self.host.copy_(next_id.view(1), non_blocking=True)
            self.event.record()
        else:
            self.pending = next_id

    def wait(self) -> int:
        if self.cuda:
            self.event.synchronize()
            return int(self.host[0])
        return int(self.pending[0])


def _warpers(sampling: Sampling) -> list[Any]:
    if sampling.greedy:
        return []
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    warpers: list[Any] = [TemperatureLogitsWarper(sampling.temperature)]
    if sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    return warpers


def reserved_cache(config: Any, capacity: int) -> Any:
    """A `DynamicCache` whose full-attention layers write into buffers reserved for `capacity` tokens.

    transformers' DynamicLayer concatenates its whole key/value tensors with each new token: on a
    2-core CPU that copy was a fifth of SmolLM2's decoding time at a 1,000-token prompt (46 MB per
    token). Here each token is written in place and the layer hands out a view of the filled part,
    so attention sees exactly the same keys (unlike a static cache, whose masked empty slots cost
    attention time). Past `capacity` a layer grows by doubling."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class ReservedLayer(DynamicLayer):
        def __init__(self) -> None:
            super().__init__()
            self.filled = 0

        def lazy_initialization(self, key_states: Any, value_states: Any) -> None:
            super().lazy_initialization(key_states, value_states)
            batch, heads = key_states.shape[:2]
            self._keys = key_states.new_empty((batch, heads, capacity, key_states.shape[-1]))
            self._values = value_states.new_empty((batch, heads, capacity, value_states.shape[-1]))

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            import torch

            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.filled + key_states.shape[-2]
            if end > self._keys.shape[-2]:  # past the reservation: double it
                size = max(end, 2 * self._keys.shape[-2])
                grow = (0, 0, 0, size - self._keys.shape[-2])
                self._keys = torch.nn.functional.pad(self._keys, grow)
                self._values = torch.nn.functional.pad(self._values, grow)
            self._keys[:, :, self.filled : end] = key_states
            self._values[:, :, self.filled : end] = value_states
            self.filled = end
            self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
            return self.keys, self.values

    cache = DynamicCache(config=config)
    cache.layers = [ReservedLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
