import sys
from pathlib import Path

# tests import their helpers (tiny_models) by name
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402

COMPAT_RUNTIME = "cactus-0.2"


def pytest_configure(config):
    config.addinivalue_line("markers", f"compat: runs the app's old runtime ({COMPAT_RUNTIME}: llama-cpp-python "
                            f"0.3.9 in its own venv, installed by `dndllama runtime install {COMPAT_RUNTIME}`)")


def pytest_collection_modifyitems(config, items):
    compat = [item for item in items if "compat" in item.keywords]
    if not compat:
        return
    from dndllama.app_runtime import find_runtime_env, runtimes_root

    if find_runtime_env(COMPAT_RUNTIME) is None:
        skip = pytest.mark.skip(reason=f"the {COMPAT_RUNTIME} runtime is not installed under {runtimes_root()}: "
                                f"run `dndllama runtime install {COMPAT_RUNTIME}` (about 2 minutes on 2 cores)")
        for item in compat:
            item.add_marker(skip)
