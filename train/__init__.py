"""Training: command line, recipes, loop, data set preparation, benchmark."""
