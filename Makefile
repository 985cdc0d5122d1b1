.PHONY: setup demo test bench clean

setup: .venv/.installed

.venv/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

# The main job on its embedded default.
demo: setup
	.venv/bin/dyno demo

# Lint and types first (seconds), then the suite.
test: setup
	.venv/bin/ruff check dyno
	.venv/bin/mypy
	.venv/bin/python -m pytest -q

clean:
	rm -rf .venv build *.egg-info
