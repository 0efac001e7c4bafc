"""Fixtures of the data tests: the tiny Qwen-like tokenizer, built once."""
import pytest

from showo2_jax.data import testing, tokenizer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
  return testing.build_test_tokenizer(tmp_path_factory.mktemp("qwen_tok"))


@pytest.fixture(scope="session")
def tok_special(tokenizer_dir):
  return tokenizer.load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def tok(tok_special):
  return tok_special[0]


@pytest.fixture(scope="session")
def special(tok_special):
  return tok_special[1]
