r"""Trains the embedded default on the synthetic world and exports it as Hugging Face directories.

  python -m experiments.train_synthetic --config=configs/train_synthetic.py --workdir=DIR
  # the LLaVA stage again with other settings, on DIR's data, SigLIP and tower features (~10 min less):
  python -m experiments.train_synthetic --config=configs/train_synthetic.py --workdir=DIR2 \
      --config.stage1_from=DIR --config.llava.steps=6400

What each stage trains on and with which losses: `jaxvlm.tiny.stages`. Outputs: DIR/data (videos +
decoded cache), DIR/ckpt/{siglip,llava} (orbax), DIR/metrics.jsonl, DIR/loss_{siglip,llava}.png,
DIR/export/{siglip_tiny,llava_ov_tiny} (Hugging Face directories), and a validation summary printed at
the end (and written to DIR/val_summary.json). The shipped run's numbers and training time:
docs/results.md. To ship a trained run as the default, after checking it with
`python -m experiments.eval_synthetic --assets=DIR/export`:

  rm -rf assets/siglip_tiny assets/llava_ov_tiny && cp -r DIR/export/* assets/
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from jaxvlm.tiny import evaluation, stages


def main(argv):
  del argv
  summary = stages.train(flags.FLAGS.config, flags.FLAGS.workdir)
  if 'llava' in summary:
    print(evaluation.format_summary(summary))
  print(f"training wall time: {summary['train_seconds'] / 60:.1f} min")


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'configs/train_synthetic.py[:runlocal]', lock_config=True)
  flags.DEFINE_string('workdir', 'runs/train_synthetic', 'outputs; a rerun resumes')
  app.run(main)
