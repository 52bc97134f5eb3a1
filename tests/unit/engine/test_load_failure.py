"""Which failed loads are retried (by the error's class) and how a failure reads."""

from __future__ import annotations

import pytest

from modelgate.engine.loader import MemoryFiles, load_model, preflight
from modelgate.engine.runtime import LoadFailure, is_permanent
from modelgate.errors import ConfigError, EngineError, ModelFormatError, OutOfMemory
from modelgate.storage.errors import KeyUnavailable, LuksBusy, SealedIntegrityError, WrongKey


@pytest.mark.parametrize(
    "exc",
    [
        ConfigError("model directory not found"),
        ModelFormatError("unsupported model_type 'x'"),
        WrongKey("the key is not this sealed model's key"),
        KeyUnavailable("key file k does not exist"),
        SealedIntegrityError("object is truncated"),
        FileNotFoundError("model.safetensors"),
        PermissionError("model.safetensors"),
    ],
)
def test_what_cannot_change_is_permanent(exc: BaseException) -> None:
    assert is_permanent(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ImportError("cannot import name 'PreTrainedTokenizerFast' from 'transformers'"),
        RuntimeError("CUDA error: out of memory"),
        OutOfMemory("out of device memory"),
        EngineError("the engine stopped"),
        LuksBusy("the device is in use"),
        OSError(5, "Input/output error"),
    ],
)
def test_what_may_change_is_retried(exc: BaseException) -> None:
    assert not is_permanent(exc)


def test_a_failure_reads_with_its_cause_and_what_happens_next() -> None:
    exc = ImportError("cannot import name 'X'\n  from 'transformers'")
    retried = LoadFailure.of("m", exc, attempt=2, next_at=14.0)
    assert retried.describe(now=10.0) == (
        "model 'm' failed to load: ImportError: cannot import name 'X' from 'transformers' "
        "(attempt 2; the next in 4.0 s)"
    )
    assert retried.error(now=10.0).retry_after == 4.0 and retried.error(now=10.0).status == 503
    assert "gave up after 6 attempts" in LoadFailure.of("m", exc, 6, None).describe(0.0)
    permanent = LoadFailure.of("m", WrongKey("wrong key"), attempt=1, next_at=14.0)
    assert permanent.permanent and permanent.next_at is None  # never scheduled again
    assert "wrong key (not retried" in permanent.describe(10.0)
    assert permanent.error(10.0).retry_after is None


def test_format_problems_are_model_format_errors_and_preflight_finds_them(tiny_model) -> None:
    def copy(**changes: bytes | None) -> MemoryFiles:
        files = {
            p.relative_to(tiny_model).as_posix(): p.read_bytes() for p in tiny_model.rglob("*") if p.is_file()
        }
        for name, data in changes.items():
            if data is None:
                files.pop(name)
            else:
                files[name] = data
        return MemoryFiles(files)

    preflight(copy())
    for broken, needle in (
        (copy(**{"config.json": None}), "no config.json"),
        (copy(**{"config.json": b'{"model_type": "qwen2"'}), "invalid JSON"),
        (copy(**{"tokenizer.json": None}), "no tokenizer.json"),
        (copy(**{"model.safetensors": None}), "no *.safetensors"),
        (copy(**{"config.json": b'{"model_type": "no-such-type"}'}), "unsupported model_type"),
    ):
        with pytest.raises(ModelFormatError, match=needle.replace("*", r"\*")):
            preflight(broken)
        with pytest.raises(ModelFormatError):
            load_model(broken, device="cpu")


def test_loads_import_one_at_a_time_and_read_weights_side_by_side(tiny_model, monkeypatch) -> None:
    """Two loads at once: never both in the step that imports (the tokenizer, the model
    class, the meta build), and both in the weights at the same time (in-memory files)."""
    import threading
    import time

    from modelgate.engine import loader

    inside, most = [0], [0]
    real_tokenizer, real_state = loader.load_tokenizer, loader._state_dict
    both_reading = threading.Barrier(2, timeout=30)

    def counted_tokenizer(files):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.2)  # the other load has the time to come in, were it let in
        inside[0] -= 1
        return real_tokenizer(files)

    def meeting_state(*args):
        both_reading.wait()  # broken (an error) unless the other load reads its weights too
        return real_state(*args)

    monkeypatch.setattr(loader, "load_tokenizer", counted_tokenizer)
    monkeypatch.setattr(loader, "_state_dict", meeting_state)
    results: list[object] = []

    def files():
        return MemoryFiles(
            {
                p.relative_to(tiny_model).as_posix(): p.read_bytes()
                for p in tiny_model.rglob("*")
                if p.is_file()
            }
        )

    def load() -> None:
        try:
            results.append(load_model(files(), device="cpu"))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 2 and not any(isinstance(r, BaseException) for r in results), results
    assert most[0] == 1


def test_directory_loads_run_from_pretrained_one_at_a_time_and_come_back_whole(
    tiny_model, monkeypatch
) -> None:
    """transformers' from_pretrained is not thread-safe (four at once: lm_head untied and
    random in all four), so directory loads take turns, and every model is whole."""
    import threading
    import time

    import torch

    from modelgate.engine import loader

    inside, most = [0], [0]
    real = loader._from_pretrained

    def counted(*args):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.2)
        try:
            return real(*args)
        finally:
            inside[0] -= 1

    monkeypatch.setattr(loader, "_from_pretrained", counted)
    results: list[object] = []

    def load() -> None:
        try:
            results.append(load_model(loader.DirectoryFiles(tiny_model), device="cpu"))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 3 and not any(isinstance(r, BaseException) for r in results), results
    assert most[0] == 1
    ids = torch.tensor([[1, 2, 3]])
    first = results[0].model(ids).logits  # type: ignore[attr-defined]
    assert all(torch.equal(r.model(ids).logits, first) for r in results)  # type: ignore[attr-defined]
