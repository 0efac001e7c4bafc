"""Progress bars that tell the truth: the clock starts at the first iteration (not
at the compilation before it), bars stay when done, decoding has a total."""
import time

from showo2_jax.sample import progress


def test_compilation_is_not_counted_in_the_rate(capsys):
  with progress.bar(4, "denoising") as b:
    assert "compiling" in str(b)
    time.sleep(0.5)  # "compilation" before the first iteration
    before = time.time()
    progress.tick()
    assert b.start_t >= before - 0.01
    for _ in range(3):
      progress.tick()
    assert "compiling" not in str(b)
    assert b.format_dict["elapsed"] < 0.4  # the 0.5 s of compilation is not in it
  err = capsys.readouterr().err
  assert "4/4" in err.replace("\r", "\n").strip().splitlines()[-1]  # left on screen


def test_advance_to_finishes_an_early_stop():
  with progress.bar(10, "decoding") as b:
    progress.tick()
    progress.advance_to(b, 10)
    assert b.n == 10
  progress.advance_to(None, 3)  # disabled bars are None
