"""Benchmark loaders and the synthetic video-QA world."""

from jaxvlm.data.loaders import LOADERS
from jaxvlm.data.loaders import MVBENCH_FRAME_FPS
from jaxvlm.data.loaders import MVBENCH_TASKS
from jaxvlm.data.loaders import MVBenchTask
from jaxvlm.data.loaders import LoadResult
from jaxvlm.data.loaders import load_benchmark
from jaxvlm.data.loaders import load_egoschema
from jaxvlm.data.loaders import load_longvideobench
from jaxvlm.data.loaders import load_mvbench
from jaxvlm.data.loaders import load_nextqa
from jaxvlm.data.loaders import load_synthetic
from jaxvlm.data.loaders import load_videomme
from jaxvlm.data.sample import DATA_TYPES
from jaxvlm.data.sample import LETTERS
from jaxvlm.data.sample import SampleError
from jaxvlm.data.sample import VideoQASample
