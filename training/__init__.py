"""Training and export (the [train] extra): Keras models trained on IMDB, Reuters or your files, exported to
model packages through the parity gate. `rnnserve-train --help`."""
