"""Training of the embedded default (tiny SigLIP, then tiny LLaVA-OneVision) on the synthetic world.

  python -m experiments.train_synthetic --config=configs/train_synthetic.py --workdir=DIR
  python -m experiments.train_synthetic --config=configs/train_synthetic.py:runlocal --workdir=DIR

`runlocal` is a seconds-long smoke run (a handful of videos and steps; the bars are not expected).
"""

from ml_collections import config_dict


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.seed = 0
  c.num_frames = 32  # the LLaVA sees every frame of the 32-frame videos
  # 16000 videos, each seen ~3 times: with 2400 (seen 16 times) the LLaVA memorised them (train 0.74,
  # validation 0.51).
  c.data = config_dict.ConfigDict({'num_train': 16000, 'num_val': 100, 'fps': 8, 'workers': 2})
  c.dtype = 'float32'
  c.stages = 'siglip,llava'  # 'siglip' alone stops after stage 1
  c.stage1_from = ''  # workdir of an earlier run: reuse its data, SigLIP and tower features
  c.checkpoint_every = 50  # steps between orbax checkpoints (and metric lines)
  c.keep_checkpoints = 2
  c.log_every = 10

  c.siglip = config_dict.ConfigDict()
  c.siglip.steps = 1200
  c.siglip.batch_size = 128  # frames (and their captions) per step
  c.siglip.lr = 3e-3
  c.siglip.warmup = 20
  c.siglip.weight_decay = 1e-4
  c.siglip.evidence_share = 0.4  # frames drawn from evidence frames (two objects) rather than uniformly
  c.siglip.moving_share = 0.4  # ... and from the frames of a moving object (its direction is hard)
  c.siglip.word_loss_weight = 3.0  # auxiliary loss: each frame's mean patch feature predicts its caption
  # words (tiny.siglip_loss_fn); without it the tower drops direction

  c.llava = config_dict.ConfigDict()
  c.llava.steps = 3200
  c.llava.batch_size = 16  # videos per step
  c.llava.lr = 3e-3
  c.llava.warmup = 30
  c.llava.first_types = 'needle,order'  # curriculum: the first first_steps steps see only these
  c.llava.first_steps = 1000  # ... question types (order is learned only after ~700 such steps)
  c.llava.short_steps = 1300  # curriculum: the first steps see videos cut to short_frames frames
  c.llava.short_frames = 16  # ... around their evidence (train_synthetic.curriculum_frames)
  c.llava.weight_decay = 1e-4
  c.llava.frame_loss_weight = 1.0  # auxiliary loss: each frame's last slot predicts its caption words
  c.llava.frame_loss_layer = 2  # ... read from the input of this decoder layer (early, see tiny.llava_loss_fn)
  c.llava.seen_loss_weight = 1.0  # auxiliary loss: each frame's last slot predicts all words shown so far
  c.llava.seen_loss_layer = 4  # ... read from the input of this decoder layer
  c.llava.event_loss_weight = 1.0  # auxiliary loss: each frame's last slot predicts its event words
  c.llava.event_loss_layer = 2  # ... (flash number, direction, first/second; synthetic.frame_events)
  c.llava.option_loss_weight = 1.0  # auxiliary loss: each option line's end predicts its letter or 'no'
  c.llava.recall_loss_weight = 1.0  # auxiliary loss: the question's last slot predicts the right
  # option's words (tiny.llava_loss_fn)
  c.llava.ground_loss_weight = 1.0  # auxiliary loss: an option's colour word predicts what the video
  # shows of its object (synthetic.option_events)

  if arg == 'runlocal':
    c.data.num_train, c.data.num_val = 16, 5
    c.siglip.steps, c.siglip.batch_size, c.siglip.warmup = 4, 16, 1
    c.llava.steps, c.llava.batch_size, c.llava.warmup, c.llava.short_steps = 4, 2, 1, 2
    c.llava.first_steps = 1
    c.checkpoint_every, c.log_every = 2, 1
  elif arg:
    raise ValueError(f'unknown config argument {arg!r}; expected runlocal or nothing')
  return c
