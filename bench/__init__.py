"""The performance benchmark of bertclf + sweep: `python -m bench [--quick] [--json PATH]`.

Every figure is a ratio of two measurements taken side by side in the same run. The package
keeps its top-level imports light: trial processes are spawned and import it again.
"""

import bertclf  # noqa: F401  (light; selects tf-keras before any bench module imports TF)
