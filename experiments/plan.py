r"""Memory plan: bytes per device of a Video-LLM forward on a TPU slice, with no real memory, host RAM
at load, and the recommended mesh and launch (how it is counted: `jaxvlm.memory_plan`).

  python -m experiments.plan --config=configs/plan.py:llava_ov_7b --config.num_frames=32 \
      --config.tpu=v5e-8 [--config.mesh.fsdp=-1 --config.mesh.tensor=1 --config.batch_size=1]

`--config.output=launch_flags` prints only the recommended `--config.mesh.*` flags (tpu/launch.sh reads
them) and exits non-zero, with the plan on stderr, when no mesh fits.

With --config.exit_layer=E --config.intra_frame_layers=M --config.frames=K (1-based, as the paper) it
also prints the prefill cost of that efficiency plan against the full model at num_frames: FLOPs split
into attention / linear / vision, KV-cache bytes, and `attention FLOPs: X % of full` (`jaxvlm.costs`).
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from jaxvlm import config_checks, costs, memory_plan


def main(argv):
  del argv
  config = flags.FLAGS.config
  config_checks.check(config, memory_plan.CONFIG_FIELDS)  # every field, named if bad
  costs.config_plan(config)  # bad plan fields fail before anything is computed
  if config.output == 'launch_flags':
    r = memory_plan.recommend(config)
    if not r['plan']['fits']:
      print(memory_plan.format_plan(r['plan']), memory_plan.format_recommendation(r), sep='\n', file=sys.stderr)
      sys.exit(f'{config.model} does not fit {config.tpu} with any candidate mesh (see the plan above)')
    print(memory_plan.mesh_flags(r['plan'], r['launch']))
    return
  print(memory_plan.format_plan(memory_plan.plan(config)))
  if config.recommend:
    print()
    print(memory_plan.format_recommendation(memory_plan.recommend(config)))
  print(costs.cost_report(config))


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'configs/plan.py[:preset]', lock_config=True)
  app.run(main)
