"""Every file format pocketcnn reads or writes: checkpoints, ``.pcz``, weight files, and the
metadata exported models carry. Import the submodules; this package imports nothing, so that
the torch-free ``metadata`` module stays torch-free."""
