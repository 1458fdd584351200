"""Where things live on disk. Everything else asks here instead of building paths itself."""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = Path(os.environ.get("TRAINER_MODELS_DIR", PROJECT_ROOT / "models"))
STARTER_MODEL_DIR = MODELS_DIR / "qwen2-starter"
DATA_DIR = PROJECT_ROOT / "data"
UPLOADS_DIR = DATA_DIR / "uploads"
SAMPLE_DATA = DATA_DIR / "sample_zhenhuan.jsonl"
CONFIGS_DIR = PROJECT_ROOT / "configs"
CACHE_DIR = Path(os.environ.get("TRAINER_CACHE_DIR", PROJECT_ROOT / ".cache"))


def runs_root() -> Path:
    """Root folder of all run directories; read at call time so tests can point it elsewhere."""
    return Path(os.environ.get("TRAINER_RUNS_ROOT", PROJECT_ROOT / "runs"))


def resolve(path: str | Path) -> Path:
    """A path as a user types it in a config, a form or a command: `~` expanded, relative paths taken from the
    project folder (never from the current directory, which differs between the dashboard, the CLI and the ranks)."""
    p = Path(str(path).strip()).expanduser()
    return (p if p.is_absolute() else PROJECT_ROOT / p).resolve()


def shown(path: str | Path) -> str:
    """A path as a user would type it (the inverse of `resolve`): relative to the project folder where it lies
    inside it, as it is otherwise."""
    try:
        return str(Path(path).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)
