r"""Re-evaluates the shipped embedded default on the held-out synthetic test split and prints the
accuracy per question type, text-only accuracy and SigLIP retrieval (definitions:
`jaxvlm.tiny.evaluation`).

  python -m experiments.eval_synthetic [--assets=assets] [--data_dir=runs/eval_synthetic] [--num=200]
"""

from __future__ import annotations

from absl import app, flags

from jaxvlm.tiny import evaluation


def main(argv):
  del argv
  f = flags.FLAGS
  summary = evaluation.evaluate_assets(f.assets, f.data_dir, f.split, f.num, f.seed)
  print(evaluation.format_summary(summary))


if __name__ == '__main__':
  flags.DEFINE_string('assets', 'assets', 'directory holding siglip_tiny/ and llava_ov_tiny/')
  flags.DEFINE_string('data_dir', 'runs/eval_synthetic', 'where the test split is generated')
  flags.DEFINE_integer('num', 200, 'test items (40 per question type)')
  flags.DEFINE_integer('seed', 1234, 'seed of the test split (the knockout default uses 1234)')
  flags.DEFINE_string('split', 'test', 'synthetic split')
  app.run(main)
