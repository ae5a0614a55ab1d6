"""KFP components: one folder each, a thin ``@dsl.component`` shell over the library.

Every component runs in the project image (``PIPELINE_IMAGE``), which has
recflow installed, so component bodies only import ``recflow`` and call one
step of :mod:`recflow.pipeline.steps`. ``kfp.local`` runs the same bodies in
this Python environment.
"""

import os

from recflow.images import image

# The image docker/pipeline.Dockerfile builds, named in recflow/images.yaml;
# set RECFLOW_PIPELINE_IMAGE before compiling to use another (a registry's copy).
PIPELINE_IMAGE = os.environ.get("RECFLOW_PIPELINE_IMAGE") or image("pipeline")
