import pytest

from modelgate.engine.demo_model import write_demo_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return write_demo_model(tmp_path_factory.mktemp("demo") / "tiny", kind="chat", size="tiny", seed=0)


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    from modelgate.engine.loader import DirectoryFiles, load_tokenizer

    return load_tokenizer(DirectoryFiles(tiny_model))
