"""Data layer: MMRec-format reader, synthetic generator, samplers and the DataModule."""

from egra.data.interactions import TEST, TRAIN, VALID, DataError, Interactions

__all__ = ["TEST", "TRAIN", "VALID", "DataError", "Interactions", "RecDataModule"]


def __getattr__(name: str):
    # The DataModule pulls in Lightning (~5 s); import it only when asked for.
    if name == "RecDataModule":
        from egra.data.datamodule import RecDataModule

        return RecDataModule
    raise AttributeError(name)
