"""The shipped recipes, installed as the package data of ``rvq_cli.recipes`` (pyproject.toml maps
this folder to that package); ``rvq_cli.config.shipped_recipes`` lists them."""
