"""TextGenerator: runs a character language-model package, one character at a time.

The package's graph is step-wise (training/onnx_rnn.py `stepwise_lm`): ids and each layer's state in, the
next character's logits and the states out. A prompt runs in windows of PROMPT_WINDOW characters, each
carrying the state of the one before (exact, and a generation's memory is bounded whatever the prompt's
length); then every step feeds the sampled character and the carried state, so the prefix is never
recomputed. Steps go through the model's Stepper, a batcher of their own: concurrent generations and sequence
steps share onnxruntime runs (rows of equal length are stacked) in its worker thread. `predict` and
`predict_batch` read whole texts (run_batch), through the main batcher and here and now alike.

    lm = TextGenerator.open("models/reuters-char-lm/1")
    text = "".join([c async for c in lm.generate("Oil prices", Sampling(max_chars=80, temperature=0.5, seed=7))])
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from rnnserve.service.core.errors import InvalidInput, Overloaded, PayloadTooLarge
from rnnserve.service.core.package import Package, PackageError, Task
from rnnserve.service.core.tokenizer import Tokenizer
from rnnserve.service.runtime.base import ModelRuntime, RuntimeObserver, RuntimeOptions
from rnnserve.service.runtime.session import OrtSession
from rnnserve.service.runtime.stepper import Stepper

# Characters of a prompt per run. One run's memory grows with its length (a 100,000-character prompt in one
# run took ~240 MB, kept by onnxruntime's arena); windows of this size cost a few MB at max_batch_size rows.
PROMPT_WINDOW = 256


@dataclass(frozen=True)
class Sampling:
    max_chars: int = 200
    temperature: float = 1.0  # 0: always the most probable character
    top_k: int = 0  # 0: every character; else only the k most probable
    seed: int | None = None  # the same seed, prompt and settings give the same text


class TextGenerator(ModelRuntime):
    """Runs a character language model: `generate` samples a continuation; `predict` (texts [N] -> the next
    character's probabilities [N, C] over `chars`, float32) and `step` (the same for one text from a carried
    state, and the state after it: the V2 sequence extension) read texts as they are."""

    tasks = (Task.TEXT_GENERATION,)
    stepper: Stepper  # the package's graph is step-wise: every run goes through it

    def __init__(self, package: Package, session: OrtSession, options: RuntimeOptions = RuntimeOptions(),
                 observer: RuntimeObserver | None = None):
        assert package.tokenizer is not None  # read_package requires one for text tasks
        self.tokenizer = Tokenizer(package.tokenizer)
        spec = package.tokenizer
        self.first_id = spec.index_from + 1  # ids below are padding and unseen characters: never sampled
        self.chars = spec.words[: self.tokenizer.max_id - spec.index_from]
        self.active = 0
        self._none_active = asyncio.Event()
        self._none_active.set()
        super().__init__(package, session, options, observer)
        self.stepper = self._make_stepper(session, options)

    def check(self, warm_up: bool) -> None:
        """One step on the highest id, which also warms the session (cheap: no warm-up batches needed)."""
        (logits, _), = self.stepper.run([(np.array([self.tokenizer.max_id]), self.stepper.zero_state())])
        if logits.shape != (len(self.chars) + self.first_id,):
            raise PackageError(f"the model's logits do not cover the tokenizer's {len(self.chars)} characters")

    def run_batch(self, rows: list[str]) -> np.ndarray:
        """Texts [N] -> the next character's probabilities [N, C], each text run in windows of PROMPT_WINDOW
        characters, the texts' windows of equal length sharing one run (the batcher's worker thread)."""
        ids = [self.encode_prompt(text, "text") for text in rows]
        states = [self.stepper.zero_state() for _ in rows]
        logits: list[np.ndarray] = [np.empty(0)] * len(rows)
        for start in range(0, max(map(len, ids)), PROMPT_WINDOW):
            live = [i for i, text in enumerate(ids) if start < len(text)]
            outs = self.stepper.run([(ids[i][start:start + PROMPT_WINDOW], states[i]) for i in live])
            for i, (out, state) in zip(live, outs):
                logits[i], states[i] = out, state
        return np.stack([self.probabilities(z) for z in logits])

    async def _step(self, text: str, state: list[np.ndarray] | None) -> tuple[np.ndarray, list[np.ndarray]]:
        """The text run from the state (None: zeros) in windows through the stepper's batcher: the next
        character's probabilities [1, C] and the state after the text."""
        ids = self.encode_prompt(text, "text")
        for start in range(0, len(ids), PROMPT_WINDOW):
            logits, state = await self.stepper.step(ids[start:start + PROMPT_WINDOW], state)
        assert state is not None  # the text has at least one window
        return self.probabilities(logits)[None], state

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Logits [V] -> float32 probabilities [C] over `chars`."""
        z = logits[self.first_id:].astype(np.float64)
        p = np.exp(z - z.max())
        return (p / p.sum()).astype(np.float32)

    def encode_prompt(self, prompt: str, what: str = "prompt") -> np.ndarray:
        ids, _ = self.tokenizer.encode(prompt)
        if not ids:
            raise InvalidInput(f"the {what} is empty: give at least one character to continue")
        return np.array(ids, np.int64)

    def sample(self, logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
        z = logits[self.first_id:].astype(np.float64)
        if sampling.temperature == 0:
            return self.first_id + int(z.argmax())
        if 0 < sampling.top_k < len(z):
            z[z < np.partition(z, -sampling.top_k)[-sampling.top_k]] = -np.inf
        # The maximum comes off before the division: a tiny temperature then sends the others to -inf (p = 0),
        # never inf - inf (NaN).
        with np.errstate(over="ignore"):  # -inf is what a vanishing temperature means for the others
            p = np.exp((z - z.max()) / sampling.temperature)
        return self.first_id + int(rng.choice(len(p), p=p / p.sum()))

    async def generate(self, prompt: str, sampling: Sampling, max_chars: int | None = None,
                       max_generations: int | None = None) -> AsyncIterator[str]:
        """The characters that follow the prompt, one at a time. The limits are checked when the first
        character is asked for: InvalidInput (422) for an empty prompt, PayloadTooLarge (413) past max_chars,
        Overloaded (503) with max_generations already running. Once started, the generation counts as running
        until it ends or is closed (a client that goes away closes it)."""
        ids = self.encode_prompt(prompt)
        if max_chars is not None and sampling.max_chars > max_chars:
            raise PayloadTooLarge(f"max_chars {sampling.max_chars} is over the limit of {max_chars}")
        if max_generations is not None and self.active >= max_generations:
            raise Overloaded(f"model {self.name!r} is running {self.active} generations, its limit; retry later")
        rng = np.random.default_rng(sampling.seed)
        self.active += 1  # no await since the check: concurrent requests cannot both pass it
        self._none_active.clear()
        try:
            state = None
            for start in range(0, len(ids), PROMPT_WINDOW):
                logits, state = await self.stepper.step(ids[start:start + PROMPT_WINDOW], state)
            for n in range(sampling.max_chars):
                i = self.sample(logits, sampling, rng)
                yield self.chars[i - self.first_id]
                if n + 1 < sampling.max_chars:  # the last character needs no step after it
                    logits, state = await self.stepper.step(np.array([i]), state)
        finally:
            self.active -= 1
            if not self.active:
                self._none_active.set()

    async def close(self, grace_s: float = 0.0) -> None:
        """Generations already running finish on this copy first (up to grace_s): between two of their steps
        the batcher is idle, so a reload or unload would otherwise cut them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        try:
            await asyncio.wait_for(self._none_active.wait(), grace_s)
        except TimeoutError:
            pass
        await super().close(max(0.0, deadline - loop.time()))
