"""The procedural i-CLEVR renderer: scene sampling (`scenes`), a torch ray caster (`raycast`) and dataset writing
(`dataset`)."""
