# Sourced by scripts/fuzz and scripts/test: make .venv from pyproject.toml when it is missing
# or older than pyproject.toml, so nothing is ever installed by hand.
if [ ! -x .venv/bin/memslot-fuzz ] || [ pyproject.toml -nt .venv/.installed ]; then
  echo "setting up .venv from pyproject.toml ..." >&2
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,atheris]'
  touch .venv/.installed
fi
