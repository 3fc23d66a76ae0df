"""Per-channel normalisation constants shared by training and loading."""

EMBEDDED_MEAN = (0.5, 0.5, 0.5)
EMBEDDED_STD = (0.25, 0.25, 0.25)
