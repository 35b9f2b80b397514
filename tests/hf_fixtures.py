"""The `imported` fixture of the Hugging Face import tests, a plugin that their modules load
with ``pytest_plugins = ["hf_fixtures"]`` (so every module shares one import of each kind)."""

import pytest
from hf_checkpoints import CHECKPOINTS, train_spiece, write_checkpoint

from bertclf.encoders.hf.install import import_checkpoint


@pytest.fixture(scope="session")
def imported(tmp_path_factory):
    """kind -> (checkpoint folder, import folder), imported on first use (once a session)."""
    root = tmp_path_factory.mktemp("hf")
    done = {}

    def get(kind):
        if kind not in done:
            options = dict(CHECKPOINTS[kind])
            if options.pop("spiece", False):
                options["spiece"] = train_spiece(root / "spiece", options["vocab_size"])
            src = write_checkpoint(root / f"{kind}-src", **options)
            import_checkpoint(src, root / kind, seq_len=48)
            done[kind] = (src, root / kind)
        return done[kind]

    return get
