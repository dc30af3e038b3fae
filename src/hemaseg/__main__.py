"""``python -m hemaseg ...``: the same command line as ``hemaseg ...``."""
from hemaseg.cli import app

if __name__ == "__main__":
    app(prog_name="hemaseg")
