"""A user's own package, as `dyno analyze mypkg.models:build` finds it (tests put tests/ on the path)."""
