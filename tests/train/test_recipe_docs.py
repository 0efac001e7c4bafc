"""The recipe commands in docs/training.md are the ones the configs run.

Every `showo2-jax train` line of the section "The paper's recipe, end to end" is
expanded as the shell would (its variables), parsed by the train CLI's own parser
and loaded with its data file and overrides (data paths are placeholders, not
read). Checked against spec 7.2-7.3 and the original's train_showo2_*.sh:
- the sub-stages run in order 1a, 1b, 2a, 2b, 2c, each starting from the
  previous command's workdir (`checkpoint:`), 1a from Qwen2.5 (+ SigLIP) + the
  pre-distilled file;
- the 7B stage 1a takes the LLM from Qwen2.5-7B and the rest but the LLM-width
  layers from the final 1.5B run (after 2c);
- freezing and loss weights per sub-stage, the LLaVA `stage` tag per stage-2 file;
- every data file's rows per host times the original's hosts (8 devices each)
  make the config's global batch.
"""
import argparse
import re
import shlex

from configs import _train_common as tc
from configs import stage2_1p5b
from showo2_jax.cli import train as train_cli
from showo2_jax.train import warm_start
from tests.train import runs

DOC = runs.REPO / "docs" / "training.md"
DEVICES_PER_HOST = 8
DEVICES = {"stage1_1p5b": 64, "stage1_7b": 128, "stage2_1p5b": 48, "stage2_7b": 48}
LLAVA_STAGE = {"a": "pre-training", "b": "pre-training-1-5", "c": "tuning"}


def _commands():
  """[(config name, parsed args)] of the section's bash blocks, in order."""
  text = DOC.read_text()
  section = text[text.index("### The paper's recipe, end to end"):]
  section = section[:section.index("\n## ")]
  blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
  assert len(blocks) == 2, "expected the 1.5B and the 7B blocks"
  parser = argparse.ArgumentParser()
  sub = parser.add_subparsers(dest="command")
  train_cli.add_arguments(sub.add_parser("train"))
  out = []
  for block in blocks:
    env = {}
    for line in block.replace("\\\n", " ").splitlines():
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      for name in sorted(env, key=len, reverse=True):
        line = line.replace("$" + name, env[name])
      words = shlex.split(line)
      m = re.fullmatch(r"([A-Z0-9_]+)=(.*)", words[0]) if len(words) == 1 else None
      if m:
        env[m.group(1)] = m.group(2)
        continue
      assert words[:2] == ["showo2-jax", "train"], line
      out.append(parser.parse_args(words[1:]))
  return out


def _load(args):
  args.data = str(runs.REPO / args.data)
  return train_cli.load_config(args, check_data_paths=False)


def _sources(config):
  return [warm_start.parse_source(e) for e in config.init.sources]


def test_the_documented_recipe_is_what_the_configs_run():
  commands = _commands()
  expected = ([("stage1_1p5b", s) for s in "ab"] + [("stage2_1p5b", s) for s in "abc"]
              + [("stage1_7b", s) for s in "ab"] + [("stage2_7b", s) for s in "abc"])
  assert [tuple(a.config.split(":")) for a in commands] == expected
  previous = None
  workdirs = {}
  for args in commands:
    name, sub = args.config.split(":")
    c = _load(args)
    sources = _sources(c)
    if (name, sub) == ("stage1_1p5b", "a"):
      assert [s.kind for s in sources] == ["qwen2", "siglip", "semantic"]
      assert "1.5B" in sources[0].path and tuple(c.init.fresh) == tc.STAGE1_FRESH
    elif (name, sub) == ("stage1_7b", "a"):
      assert [s.kind for s in sources] == ["qwen2", "checkpoint"] and "7B" in sources[0].path
      # the final 1.5B run, after stage 2c (train_showo2_7b_stage1.sh)
      assert sources[1].path == workdirs[("stage2_1p5b", "c")]
      assert sources[1].patterns == tuple("-" + e for e in tc.TRANSFER_1P5B_TO_7B_EXCLUDE)
    else:
      assert [(s.kind, s.path, s.patterns) for s in sources] == [("checkpoint", previous, ())]
    assert c.tokenizer_path and c.vae_checkpoint, args.config
    if name.startswith("stage1"):
      assert tuple(c.train.frozen) == tc.STAGE1_FROZEN
      assert (c.train.ntp_coeff, c.train.flow_coeff) == (0.2, 1.0)
      assert [c.data.streams[n].task for n in c.data.stream_order] == ["t2i", "captioning"]
      assert ("hq" in c.data.streams.t2i.path) == (sub == "b")
    else:
      assert tuple(c.train.frozen) == (stage2_1p5b.STAGE_2A_FROZEN if sub == "a" else ())
      assert (c.train.ntp_coeff, c.train.flow_coeff) == (1.0, 1.0)
      assert [c.data.streams[n].task for n in c.data.stream_order] == ["t2i", "llava"]
      assert c.data.streams.mmu.stage == LLAVA_STAGE[sub]
      assert tuple(c.data.streams.t2i.min_res) == (512, 512)
    rows = sum(int(c.data.streams[n].batch_size) for n in c.data.stream_order)
    hosts = DEVICES[name] // DEVICES_PER_HOST
    assert rows * hosts == c.train.global_batch_size, (args.config, rows, hosts)
    workdirs[(name, sub)] = previous = args.workdir

