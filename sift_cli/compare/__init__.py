"""`sift compare`: several methods, learning rates and seeds on one task, chosen on validation, reported on test with intervals."""
