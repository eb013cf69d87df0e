"""%%cache: a notebook cell's inputs and effects from its code, its run, output and restore."""
