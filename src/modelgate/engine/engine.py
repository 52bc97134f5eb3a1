"""The local engine: one model, one step thread, continuous batching.

The event loop submits sequences and reads their events from per-sequence
queues; the step thread owns the model and the running batch.  At every step
the pure ``BatchScheduler`` says who joins and who leaves, new prompts are
prefilled together and spliced into the batch, and every running row advances
one token.  Events of a step reach the loop in one ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import torch

from modelgate.engine import constrained
from modelgate.engine.batching import BatchLimits, BatchScheduler
from modelgate.engine.detok import TokenBytes
from modelgate.engine.grammar import Constraint
from modelgate.engine.kvbatch import KVBatch
from modelgate.engine.loader import LoadedModel
from modelgate.engine.prefix_cache import PrefixStats
from modelgate.engine.sampling import SamplingConfig, TokenStats, make_generator, sample_batch
from modelgate.engine.sequence import SeqParams, Sequence, TokenEvent, merge_events
from modelgate.errors import EngineError, InvalidRequest, OutOfMemory, ShuttingDown

log = logging.getLogger(__name__)


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text
    )


class Engine:
    def __init__(self, loaded: LoadedModel, limits: BatchLimits, prefix_cache_bytes: int = 0):
        self.loaded = loaded
        self.limits = limits
        self.tokenizer = loaded.tokenizer
        self._backend_tok = loaded.tokenizer.backend_tokenizer
        self.token_bytes = TokenBytes(loaded.tokenizer)  # for log-probabilities' tokens
        config = loaded.model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.vocab_size = int(getattr(text_config, "vocab_size", 0) or len(loaded.tokenizer))
        self._sched: BatchScheduler[Sequence] = BatchScheduler(limits)
        self._batch = KVBatch(loaded.model, loaded.device, prefix_cache_bytes)
        self._stats = TokenStats(loaded.device)  # the penalties' token counts, row for row with _batch
        self._rows: list[Sequence] = []  # row order of the KV batch
        self._inbox: list[Sequence] = []
        self._holding: list[Sequence] = []  # sequences with output not yet delivered
        self._prefill_only_last = False
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0

    # -- lifecycle ---------------------------------------------------------------
    def start(self, warmup: bool = True) -> None:
        """Warm up (blocking: call from a thread) and start the step thread."""
        if warmup:
            self._warmup()
        self._thread = threading.Thread(target=self._run, name="modelgate-engine", daemon=True)
        self._thread.start()

    def _warmup(self) -> None:
        with torch.inference_mode():
            for rows in (1, 2):
                self._batch.prefill([[1, 2, 3]] * rows)
                for _ in range(2):
                    self._batch.decode([1] * rows)
                self._batch.keep([0])
                self._batch.clear()
        self._batch.prefix.stats = PrefixStats()  # warmup prompts are not traffic

    def close(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._batch.clear()
        self._stats.clear()
        self._batch.prefix.clear()
        self.loaded = None  # type: ignore[assignment]
        self._batch.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- event loop side -----------------------------------------------------------
    def decode_ids(self, ids: Any) -> str:
        return self._backend_tok.decode(list(ids), skip_special_tokens=True)  # type: ignore[no-any-return]

    def max_new_tokens(self, prompt_len: int, requested: int | None) -> int:
        room = self.loaded.max_context - prompt_len
        if room <= 0:
            raise InvalidRequest(
                f"the prompt has {prompt_len} tokens; this model's context window is {self.loaded.max_context}",
                param="messages",
                code="context_length_exceeded",
            )
        if requested is not None and requested > room:
            raise InvalidRequest(
                f"max_tokens={requested} plus the prompt's {prompt_len} tokens exceeds the context window "
                f"of {self.loaded.max_context} tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return room if requested is None else requested

    def check_sampling(self, cfg: SamplingConfig) -> None:
        """Refuse what this model cannot sample (bounds of values are checked at the edge)."""
        bad = next((t for t, _ in cfg.logit_bias if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise InvalidRequest(
                f"logit_bias names token {bad}, outside this model's vocabulary of {self.vocab_size}",
                param="logit_bias",
            )

    def submit(
        self, prompt_ids: list[int], params: SeqParams, constraint: Constraint | None = None
    ) -> Sequence:
        self.check_sampling(params.sampling)
        if self._stopping:
            raise ShuttingDown("the engine is shutting down", retry_after=1)
        seq = Sequence(
            prompt_ids,
            params,
            decode=self.decode_ids,
            eos_ids=self.loaded.eos_token_ids,
            loop=asyncio.get_running_loop(),
        )
        if not self._sched.fits_ever(seq):
            raise InvalidRequest(
                f"prompt plus max_tokens ({seq.prompt_len + seq.max_new_tokens} tokens) exceeds the KV cache "
                f"budget of {self.limits.kv_cache_tokens} tokens",
                param="max_tokens",
            )
        seq.generator = make_generator(params.sampling, self.loaded.device)
        seq.constraint = constraint  # the grammar its output must follow (engine/constrained.py)
        with self._cv:
            self._inbox.append(seq)
            self._cv.notify()
        return seq

    def cancel(self, seq: Sequence) -> None:
        seq.cancel()
        with self._cv:
            self._cv.notify()

    async def events(self, seq: Sequence) -> AsyncIterator[TokenEvent]:
        """A sequence's events until it finishes; closing this iterator cancels it."""
        try:
            while True:
                event = _coalesce(await seq.queue.get(), seq.queue)
                if event.error is not None:
                    raise event.error
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            if not seq.finished:
                self.cancel(seq)

    def stats(self) -> dict[str, int]:
        out = {
            "running": len(self._rows),
            "waiting": len(self._sched.waiting) + len(self._inbox),
            "kv_cache_bytes": self._batch.kv_bytes(),
            "kv_reserved_tokens": self._sched.tokens_reserved(),
            "steps": self.steps,
        }
        prefix = self._batch.prefix
        if prefix.enabled:
            out |= {
                "prefix_cache_bytes": prefix.nbytes,
                "prefix_cache_hit_tokens": prefix.stats.hit_tokens,
                "prefix_cache_miss_tokens": prefix.stats.miss_tokens,
            }
        dev = self.loaded.device if self.loaded is not None else None
        if dev is not None and dev.type == "cuda":
            out["device_memory_allocated_bytes"] = int(torch.cuda.memory_allocated(dev))
            out["device_memory_reserved_bytes"] = int(torch.cuda.memory_reserved(dev))
        return out

    # -- step thread -------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not self._stopping and not self._inbox and self._sched.idle:
                        self._cv.wait()
                    if self._stopping:
                        break
                    for seq in self._inbox:
                        self._sched.submit(seq)
                    self._inbox.clear()
                events: list[tuple[Sequence, TokenEvent]] = []
                try:
                    self._step(events)
                except Exception as exc:  # the server lives on; these requests fail
                    log.exception("engine step failed")
                    err = EngineError(f"generation failed: {exc}")
                    events.extend((s, s.fail(err)) for s in self._rows)
                    self._sched.finish(self._rows)
                    self._rows = []
                    self._clear_batch()
                self.steps += 1
                self._release_held(events)
                self._deliver(events)
        self._fail_all(ShuttingDown("the engine shut down", retry_after=1))

    def _step(self, events: list[tuple[Sequence, TokenEvent]]) -> None:
        plan = self._sched.plan()
        self._drop()
        if plan.join:
            self._prefill(list(plan.join), events)
            self._drop()
            # Newcomers get their first token without waiting for the others' decode
            # step; the running rows wait at most one step (never two in a row).
            if not self._prefill_only_last:
                self._prefill_only_last = True
                return
        self._prefill_only_last = False
        if self._rows:
            self._decode(events)

    def _prefill(self, joins: list[Sequence], events: list[tuple[Sequence, TokenEvent]]) -> None:
        try:
            logits = self._batch_prefill(joins)
        except Exception as exc:
            if not is_oom(exc):
                raise
            self._release()
            err = OutOfMemory(f"out of memory while reading the prompt: {exc}", retry_after=1)
            events.extend((s, s.fail(err)) for s in joins)
            self._sched.finish(joins)
            return
        start = len(self._rows)
        self._rows.extend(joins)
        self._stats.join([s.prompt_ids for s in joins], [s.params.sampling for s in joins], logits.shape[-1])
        self._sample(joins, logits, events, start)

    def _batch_prefill(self, joins: list[Sequence]) -> torch.Tensor:
        before = self._batch.rows
        every = any(s.params.prompt_logprobs for s in joins)
        try:
            logits = self._batch.prefill([s.prompt_ids for s in joins], all_positions=every)
        except Exception:
            if self._batch.rows != before:  # spliced, then failed: undo
                self._batch.keep(list(range(before)))
            raise
        if not every:
            return logits
        width = logits.shape[1]
        for i, seq in enumerate(joins):
            n = seq.prompt_len
            if seq.params.prompt_logprobs and n > 1:
                rows = logits[i, width - n : width - 1].float().log_softmax(-1)
                ids = torch.tensor(seq.prompt_ids[1:], dtype=torch.long, device=rows.device).unsqueeze(-1)
                seq.prompt_logprobs = [None, *rows.gather(1, ids).squeeze(-1).tolist()]
            elif seq.params.prompt_logprobs:
                seq.prompt_logprobs = [None]
        return logits[:, -1, :]

    def _decode(self, events: list[tuple[Sequence, TokenEvent]]) -> None:
        tokens = [s.generated[-1] for s in self._rows]
        try:
            logits = self._batch.decode(tokens)
        except Exception as exc:
            if not is_oom(exc):
                raise
            self._release()
            # Fail the newest request and let the rest go on at the next step.
            victim = self._rows[-1]
            events.append((victim, victim.fail(OutOfMemory(f"out of memory: {exc}", retry_after=1))))
            self._clear_batch()
            self._fail_running(events)
            return
        self._sample(self._rows, logits, events, 0)

    def _fail_running(self, events: list[tuple[Sequence, TokenEvent]]) -> None:
        """After losing the cache, the survivors fail too (their KV state is gone)."""
        err = OutOfMemory("out of memory in the running batch", retry_after=1)
        for s in self._rows:
            if not s.finished:
                events.append((s, s.fail(err)))
        self._sched.finish(self._rows)
        self._rows = []

    def _clear_batch(self) -> None:
        self._batch.clear()
        self._stats.clear()

    def _sample(
        self,
        seqs: list[Sequence],
        logits: torch.Tensor,
        events: list[tuple[Sequence, TokenEvent]],
        start: int,
    ) -> None:
        """Sample rows ``start ..`` of the batch (``seqs``); a row whose logits are not
        finite fails alone."""
        cfgs = [s.params.sampling for s in seqs]
        constrained.mask(seqs, logits)
        out = sample_batch(logits, cfgs, [s.generator for s in seqs], self._stats, start)
        constrained.advance(seqs, out.tokens)
        for seq, token, logprob in zip(seqs, out.tokens, out.logprobs, strict=True):
            if seq.cancelled:
                continue
            if token < 0:
                err = EngineError("the model's scores for this request are not finite (NaN or infinite)")
                events.append((seq, seq.fail(err)))
                continue
            event = seq.accept(token, logprob)
            if event is not None:
                seq.hold(event)
                self._holding.append(seq)

    def _release_held(self, events: list[tuple[Sequence, TokenEvent]]) -> None:
        """Hand held output to the loop: every step while the batch is small; with many
        rows every ``stream_interval`` steps (first token and the end at once), so the
        event loop renders fewer, larger chunks when it is the bottleneck."""
        big = len(self._rows) >= self.limits.coalesce_from_rows
        interval = self.limits.stream_interval if big else 1
        keep: list[Sequence] = []
        for seq in self._holding:
            ev = seq.pending
            if ev is None or seq.cancelled:
                continue
            if ev.finish_reason is not None or seq.sent_step < 0 or self.steps - seq.sent_step >= interval:
                events.append((seq, ev))
                seq.pending, seq.sent_step = None, self.steps
            else:
                keep.append(seq)
        self._holding = keep

    def _drop(self) -> None:
        """Remove finished and cancelled rows from the KV batch and the scheduler."""
        gone = [s for s in self._rows if s.finished or s.cancelled]
        if not gone:
            return
        keep = [i for i, s in enumerate(self._rows) if not (s.finished or s.cancelled)]
        self._batch.save({i: s.prompt_ids + s.generated for i, s in enumerate(self._rows) if s in gone})
        self._batch.keep(keep)
        self._stats.keep(keep)
        self._rows = [self._rows[i] for i in keep]
        self._sched.finish(gone)

    def _release(self) -> None:
        self._batch.prefix.clear()  # kept prefixes are the first memory to give back
        if self.loaded.device.type == "cuda":
            torch.cuda.empty_cache()

    def _deliver(self, events: list[tuple[Sequence, TokenEvent]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Sequence, TokenEvent]]] = {}
        for seq, event in events:
            by_loop.setdefault(seq.loop, []).append((seq, event))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, batch)
            except RuntimeError:
                pass  # that loop is closed: nobody is listening

    def _fail_all(self, err: BaseException) -> None:
        pending = self._rows + list(self._sched.waiting) + self._inbox
        self._deliver([(s, s.fail(err)) for s in pending if not s.finished])


def _coalesce(event: TokenEvent, queue: asyncio.Queue[TokenEvent]) -> TokenEvent:
    """Merge events that piled up while the reader was busy: fewer, larger chunks under load."""
    while event.error is None and event.finish_reason is None and not queue.empty():
        nxt = queue.get_nowait()
        if nxt.error is not None:
            return nxt
        event = merge_events(event, nxt)
    return event


def _put_all(batch: list[tuple[Sequence, TokenEvent]]) -> None:
    for seq, event in batch:
        seq.queue.put_nowait(event)
