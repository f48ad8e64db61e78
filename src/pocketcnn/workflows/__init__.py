"""Workflows (layer 4): the jobs that join the layers below: the demo, predicting from any model
file, quantizing a source and scoring it."""
