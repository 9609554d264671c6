r"""Memory plan: bytes per device of a Video-LLM forward on a TPU slice, with no real memory (how it is
counted: `jaxvlm.memory_plan`).

  python -m experiments.plan --config=configs/plan.py:llava_ov_7b --config.num_frames=32 \
      --config.tpu=v5e-8 [--config.mesh.fsdp=-1 --config.mesh.tensor=1 --config.batch_size=1]

With --config.exit_layer=E --config.intra_frame_layers=M --config.frames=K (1-based, as the paper) it
also prints the prefill cost of that efficiency plan against the full model at num_frames: FLOPs split
into attention / linear / vision, KV-cache bytes, and `attention FLOPs: X % of full` (`jaxvlm.costs`).
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from jaxvlm import config_checks, costs, memory_plan


def main(argv):
  del argv
  config_checks.check(flags.FLAGS.config, memory_plan.CONFIG_FIELDS)  # every field, named if bad
  costs.config_plan(flags.FLAGS.config)  # bad plan fields fail before anything is computed
  print(memory_plan.format_plan(memory_plan.plan(flags.FLAGS.config)))
  print(costs.cost_report(flags.FLAGS.config))


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'configs/plan.py[:preset]', lock_config=True)
  app.run(main)
